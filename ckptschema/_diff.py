"""Two checkpoints or schemas compared path by path, and that comparison as Markdown for a pull request."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ._compare import compare
from ._errors import Issue
from ._manifest import Manifest
from ._review import Schema

__all__ = ["MARKDOWN_ROWS", "differences", "markdown_summary"]

_DIFF_KINDS = {"missing": "removed", "unexpected": "added"}


def _short_digest(value: str | None) -> str | None:
    return value[:12] if value and len(value) == 64 else value


def differences(a: Manifest | Schema, b: Manifest | Schema) -> list[dict[str, Any]]:
    """Everything that differs from `a` to `b`, path by path, in tree order.

    Each difference is ``{"change", "path", "a", "b"}``; ``change`` is ``added``,
    ``removed``, ``shape``, ``dtype``, ``structure``, ``value``, ``checksum``, or a manifest
    field (``framework``, ``separator``, ``checksum-algorithm``) with path ``<manifest>``.
    When either side is structure-only, digests, values and the checksum algorithm are not
    compared.

    Example:
        >>> import numpy as np, ckptschema
        >>> old = ckptschema.manifest_of({"w": np.zeros(3, np.float32)})
        >>> new = ckptschema.manifest_of({"w": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)})
        >>> [(d["change"], d["path"], d["a"], d["b"]) for d in differences(old, new)]
        [('shape', 'w', '(3,)', '(4,)'), ('added', 'b', None, 'float32[4]')]
    """
    sa, sb = (x if isinstance(x, Schema) else Schema.of(x) for x in (a, b))
    values = not (sa.structure_only or sb.structure_only)
    fields: list[tuple[str, str | None, str | None]] = [
        ("framework", sa.framework, sb.framework),
        ("separator", sa.separator, sb.separator),
    ]
    if values:
        fields.append(("checksum-algorithm", sa.checksum, sb.checksum))
    result: list[dict[str, Any]] = [
        {"change": field, "path": "<manifest>", "a": x, "b": y} for field, x, y in fields if x != y
    ]
    issues: list[Issue] = compare(sb.skeleton, sa.skeleton, values=values).issues
    for issue in issues:
        change = _DIFF_KINDS.get(issue.kind, issue.kind)
        old, new = issue.expected, issue.found
        if change == "checksum":
            old, new = _short_digest(old), _short_digest(new)
        result.append({"change": change, "path": issue.path, "a": old, "b": new})
    return result


#: Changes in the order a Markdown summary counts them.
_CHANGES = (
    "added",
    "removed",
    "shape",
    "dtype",
    "structure",
    "value",
    "checksum",
    "framework",
    "separator",
    "checksum-algorithm",
)
#: Most rows a Markdown summary lists (a pull-request comment holds at most 65,536 characters).
MARKDOWN_ROWS = 200


def _md_code(value: str | None) -> str:
    """`value` as a Markdown code span that is safe in a table cell (empty for None).

    Example:
        >>> print(_md_code("a|b"), _md_code("x`y"), repr(_md_code(None)))
        `a\\|b` ``x`y`` ''
    """
    if value is None:
        return ""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
    text = text.replace("|", "\\|")
    ticks = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def markdown_summary(a: str, b: str, found: list[dict[str, Any]]) -> str:
    """A `differences` list as Markdown for a pull-request comment: counts per change, then the paths.

    Example:
        >>> added = {"change": "added", "path": "w", "a": None, "b": "int8[2]"}
        >>> print(markdown_summary("old.json", "new.json", [added]))
        ### ckptschema diff: `old.json` → `new.json`
        <BLANKLINE>
        **1 difference**: 1 added
        <BLANKLINE>
        | change | path | A | B |
        |---|---|---|---|
        | added | `w` |  | `int8[2]` |
        <BLANKLINE>
    """
    title = f"### ckptschema diff: {_md_code(a)} → {_md_code(b)}"
    if not found:
        return f"{title}\n\nNo differences.\n"
    counts = Counter(d["change"] for d in found)
    n = len(found)
    summary = ", ".join(f"{counts[c]} {c}" for c in _CHANGES if counts[c])
    lines = [title, "", f"**{n} difference{'s' if n != 1 else ''}**: {summary}", "", "| change | path | A | B |"]
    lines.append("|---|---|---|---|")
    for d in found[:MARKDOWN_ROWS]:
        lines.append(f"| {d['change']} | {_md_code(d['path'])} | {_md_code(d['a'])} | {_md_code(d['b'])} |")
    if n > MARKDOWN_ROWS:
        lines += ["", f"… and {n - MARKDOWN_ROWS} more: run `ckptschema diff` for every one."]
    return "\n".join(lines) + "\n"
