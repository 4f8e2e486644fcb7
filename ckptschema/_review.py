"""Schema documents for review: one line per leaf, in an order no dict insertion order changes.

A schema document is one JSON object written one member per line. The first line names the
format (``"ckptschema_schema": 2``); each following member is one node of the tree, sorted by
path; the checkpoint-wide fields (``framework``, ``separator``, ``checksum``,
``structure_only``) close the object, so every entry line ends with a comma and adding a leaf
anywhere adds exactly one line::

    "/params/Dense_0/kernel": "float32[16,32] blake3:e2c0...",
    "/opt_state/": "tuple",
    "/step": "int 3",

**Paths.** A member's name is ``/`` followed by each path part; the root is the empty
string. An int part is written in decimal; a str part bare unless it is empty, holds ``/``
or ``'``, or reads as an int, in which case it is single-quoted with each ``'`` doubled:
int ``0`` is ``/0``, str ``"0"`` is ``/'0'``, haiku's ``"mlp/~/linear_0"`` is
``/'mlp/~/linear_0'``. Names ending in ``/`` describe the **container** at that path
(``tuple``, ``list``, ``dict``, ``dict flax.core.FrozenDict``, ``namedtuple P(x,y)`` or,
when the manifest records its module, ``namedtuple optax._src.base.ScaleState(count,mu)``,
``node pkg.Cls``, ``wrapper flax.nnx.Param {"k":1}``, wrappers outermost first, joined by
`` > ``); plain dicts that hold something are implied by their children's paths and get no
line. Other names are **leaves**: ``dtype[shape]`` with an optional ``blake3:`` or ``sha256:``
digest, ``bool True``, ``int 3``, ``float 0.5`` (the exact repr), ``str "json"``, or ``none``.

A document converts back into the manifest skeleton `validate` compares with (dict keys in
path order: comparisons match keys, never positions), so it keeps every check the manifest
does. `Schema` is that conversion (paths are spelled by `_paths`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Final

from . import _manifest
from ._manifest import Manifest
from ._paths import Path, sort_key, spell_path
from ._skeleton import children

__all__ = ["DOCUMENT_VERSION", "Schema"]

#: The schema document format this release writes (today's manifest-shaped documents are 1).
DOCUMENT_VERSION: Final = 2

_HEADER = ("framework", "separator", "checksum", "structure_only")
#: A type name written without quotes.
_BARE_TYPE = re.compile(r'[^\s"]+')


def _type_token(name: str) -> str:
    return name if _BARE_TYPE.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _item(node: dict[str, Any]) -> str:
    kind = node["kind"]
    if kind == "namedtuple":
        name = f"{node['module']}.{node['name']}" if "module" in node else node["name"]
        return f"namedtuple {name}({','.join(node['fields'])})"
    if kind in ("list", "tuple") or (kind == "dict" and node["type"] is None):
        return kind
    text = f"{kind} {_type_token(node['type'])}"
    if kind == "wrapper" and node["metadata"]:
        text += " " + json.dumps(node["metadata"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text


def _leaf(node: dict[str, Any], checksum: str | None) -> str:
    kind = node["kind"]
    if kind == "none":
        return "none"
    if kind == "tensor":
        text = f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
        return text + (f" {checksum}:{node['digest']}" if "digest" in node else "")
    if "value" not in node:
        return node["type"]
    value = node["value"]
    shown = json.dumps(value, ensure_ascii=False) if node["type"] == "str" else str(value)
    return f"{node['type']} {shown}"


def _entries(skeleton: dict[str, Any], checksum: str | None) -> list[tuple[Path, bool, str]]:
    """Every line of a skeleton's document as ``(path, is_container, text)``, in document order."""
    out = []
    stack: list[tuple[Path, dict[str, Any]]] = [((), skeleton)]
    while stack:
        path, node = stack.pop()
        chain = []
        while node["kind"] == "wrapper":
            chain.append(_item(node))
            node = node["child"]
        leaf = None
        if node["kind"] in ("tensor", "scalar", "none"):
            leaf = _leaf(node, checksum)
        else:
            if not (node["kind"] == "dict" and node["type"] is None and node["children"]):
                chain.append(_item(node))
            stack.extend(children(node, path))
        if chain:
            out.append((path, True, " > ".join(chain)))
        if leaf is not None:
            out.append((path, False, leaf))
    return sorted(out, key=sort_key)


@dataclasses.dataclass(frozen=True)
class Schema:
    """A checkpoint's reviewed schema: what ``ckptschema schema`` writes and `load_schema` reads.

    Attributes:
        framework: the checkpoint's framework (``jax``, ``flax``, ...).
        separator: joins path parts into tensor keys.
        checksum: the digest algorithm (``blake3``, ``sha256``) when the tensors' digests are recorded, else None.
        skeleton: the tree as manifest skeleton data (dict keys in path order).
        structure_only: True when the document records no digests and no scalar values;
            validating against it then checks structure, dtypes and shapes only.

    Example:
        >>> import numpy as np, ckptschema
        >>> manifest = ckptschema.manifest_of({"w": np.zeros((2, 3), np.float32), "step": 3, "opt": ()})
        >>> print(Schema.of(manifest, structure_only=True).document(), end="")
        {
          "ckptschema_schema": 2,
          "/opt/": "tuple",
          "/step": "int",
          "/w": "float32[2,3]",
          "framework": "jax",
          "separator": ".",
          "checksum": null,
          "structure_only": true
        }
    """

    framework: str
    separator: str
    checksum: str | None
    skeleton: dict[str, Any]
    structure_only: bool = False

    @classmethod
    def of(cls, manifest: Manifest, structure_only: bool = False) -> Schema:
        """The schema of a checkpoint's manifest; `structure_only` drops digests and scalar values."""
        skeleton: dict[str, Any] = manifest.skeleton  # type: ignore[assignment]
        if structure_only:
            skeleton = _stripped(skeleton)
        checksum = None if structure_only else manifest.checksum
        return cls(manifest.framework, manifest.separator, checksum, skeleton, structure_only)

    def document(self) -> str:
        """The schema document: one line per entry, sorted by path, newline-terminated."""
        lines = ["{", f'  "ckptschema_schema": {DOCUMENT_VERSION},']
        for path, container, text in _entries(self.skeleton, self.checksum):
            name = spell_path(path) + ("/" if container else "")
            lines.append(f"  {json.dumps(name, ensure_ascii=False)}: {json.dumps(text, ensure_ascii=False)},")
        header = [self.framework, self.separator, self.checksum, self.structure_only]
        lines += [f'  "{k}": {json.dumps(v, ensure_ascii=False)},' for k, v in zip(_HEADER, header)]
        lines[-1] = lines[-1].rstrip(",")
        return "\n".join([*lines, "}"]) + "\n"


def _stripped(node: dict[str, Any]) -> dict[str, Any]:
    copy = {k: v for k, v in node.items() if k not in ("digest", "value")}
    if "children" in node:
        copy["children"] = [_stripped(c) for c in node["children"]]
    if "child" in node:
        copy["child"] = _stripped(node["child"])
    return copy


def _schema_document(manifest: Manifest, structure_only: bool) -> str:
    return Schema.of(manifest, structure_only=structure_only).document()


_manifest.render_schema_document = _schema_document
