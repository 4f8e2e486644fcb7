"""How a schema document names tree nodes: unambiguous paths for any str or int keys, in one order.

A path is ``/`` followed by each part; the root is the empty string. An int part is written
in decimal; a str part bare unless it is empty, holds ``/`` or ``'``, or reads as an int, in
which case it is single-quoted with each ``'`` doubled. A trailing ``/`` names the container
at a path rather than its leaf. Paths sort part by part: ints before strs, ints by value,
strs by code point, a container before its children.
"""

from __future__ import annotations

import re
from typing import Any

from ._skeleton import KeyPart

__all__ = ["CANONICAL_INT", "Path", "parse_name", "part_key", "sort_key", "spell_path"]

Path = tuple[KeyPart, ...]
_INT_LIKE = re.compile(r"[+-]?[0-9]+")
#: How an int is written: decimal, no sign but ``-``, no leading zeros.
CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _spell_part(part: KeyPart) -> str:
    if isinstance(part, int):
        return str(part)
    if part and "/" not in part and "'" not in part and not _INT_LIKE.fullmatch(part):
        return part
    return "'" + part.replace("'", "''") + "'"


def spell_path(parts: Path) -> str:
    """A path as a schema document spells it: unambiguous for any str or int keys.

    Example:
        >>> spell_path(("params", "mlp/~/linear_0", "w")), spell_path(("layers", 0, "0", "it's"))
        ("/params/'mlp/~/linear_0'/w", "/layers/0/'0'/'it''s'")
    """
    return "".join("/" + _spell_part(p) for p in parts)


def _read_part(name: str, i: int) -> tuple[KeyPart, int]:
    """The path part of member `name` starting at `i`, and where it ends."""
    if name.startswith("'", i):
        pieces, j = [], i + 1
        while True:
            k = name.find("'", j)
            if k < 0:
                raise ValueError("a quote is not closed")
            if name.startswith("''", k):
                pieces.append(name[j : k + 1])
                j = k + 2
                continue
            if k + 1 < len(name) and name[k + 1] != "/":
                raise ValueError("a quoted part must be followed by '/' or the end")
            pieces.append(name[j:k])
            return "".join(pieces), k + 1
    k = name.find("/", i)
    k = len(name) if k < 0 else k
    token = name[i:k]
    if not token or "'" in token:
        raise ValueError("an empty part, or a ' in an unquoted part (quote it: 'it''s')")
    if _INT_LIKE.fullmatch(token):
        if not CANONICAL_INT.fullmatch(token):
            raise ValueError(f"{token!r} is neither an int in decimal nor a quoted str")
        return int(token), k
    return token, k


def parse_name(name: str) -> tuple[Path, bool]:
    """A member name's path and whether it names the container at that path."""
    if name in ("", "/"):
        return (), name == "/"
    if not name.startswith("/"):
        raise ValueError("a path must start with '/'")
    parts: list[KeyPart] = []
    i = 1
    while True:
        part, i = _read_part(name, i)
        parts.append(part)
        if i == len(name):
            return tuple(parts), False
        if i + 1 == len(name):
            return tuple(parts), True
        i += 1


def part_key(part: KeyPart) -> tuple[int, Any]:
    """Ints before strs, ints by value, strs by code point."""
    return (0, part) if isinstance(part, int) else (1, part)


def sort_key(entry: tuple[Path, bool, str]) -> tuple[Any, ...]:
    path, container, _ = entry
    return tuple(map(part_key, path)), not container
