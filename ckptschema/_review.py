"""Schema documents for review: one line per leaf, in an order no dict insertion order changes.

A schema document is one JSON object written one member per line. The first line names the
format (``"ckptschema_schema": 2``); each following member is one node of the tree, sorted by
path; the checkpoint-wide fields (``framework``, ``separator``, ``checksum``,
``structure_only``) close the object, so every entry line ends with a comma and adding a leaf
anywhere adds exactly one line::

    "/params/Dense_0/kernel": "float32[16,32] sha256:e2c0...",
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
line. Other names are **leaves**: ``dtype[shape]`` with an optional ``sha256:`` digest,
``bool True``, ``int 3``, ``float 0.5`` (the exact repr), ``str "json"``, or ``none``.

A document converts back into the manifest skeleton `validate` compares with (dict keys in
path order: comparisons match keys, never positions), so it keeps every check the manifest
does. `Schema` is that conversion (paths are spelled by `_paths`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from typing import Any, Final

from . import _manifest
from ._dtypes import ALL_DTYPE_NAMES
from ._errors import FormatError
from ._json import strict_json
from ._limits import MAX_DEPTH, MAX_NODES
from ._manifest import _SCALAR_CHECKS, Manifest, json_schema, parse_manifest, short_error
from ._paths import CANONICAL_INT, Path, parse_name, part_key, sort_key, spell_path
from ._skeleton import KeyPart, children

__all__ = ["DOCUMENT_VERSION", "Schema", "document_json_schema", "parse_schema"]

#: The schema document format this release writes (today's manifest-shaped documents are 1).
DOCUMENT_VERSION: Final = 2

_HEADER = ("framework", "separator", "checksum", "structure_only")
_BARE_TYPE = re.compile(r'[^\s"]+')
_DTYPES = "|".join(sorted(ALL_DTYPE_NAMES, key=lambda n: (-len(n), n)))
_TENSOR = re.compile(rf"({_DTYPES})\[((?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*)?\](?: sha256:([0-9a-f]{{64}}))?")
_SCALAR = re.compile(r"(bool|int|float|str)(?: (.+))?", re.DOTALL)
_NAMEDTUPLE = re.compile(r"namedtuple ([^\s(),]+)\(([^\s()]*)\)")
#: Patterns of member names and values for the JSON Schema (the parser checks more).
_CONTAINER_KEY, _LEAF_KEY = r"^/([\s\S]*/)?$", r"^(/[\s\S]*[^/])?$"
_CONTAINER_ITEM = r"(list|tuple|dict|dict [\s\S]+|namedtuple [^\s(),]+\([^\s()]*\)|node [\s\S]+|wrapper [\s\S]+)"
_LEAF_VALUE = (
    rf"^(({_DTYPES})\[([0-9]+(,[0-9]+)*)?\]( sha256:[0-9a-f]{{64}})?|none|bool( True| False)?"
    r"|int( -?[0-9]+)?|float( [\s\S]+)?|str( \"[\s\S]*\")?)$"
)
#: What a scalar is checked with while a structure-only document (which has no values) is validated.
_PLACEHOLDERS = {"bool": False, "int": 0, "float": "0.0", "str": ""}


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


def _leaf(node: dict[str, Any]) -> str:
    kind = node["kind"]
    if kind == "none":
        return "none"
    if kind == "tensor":
        text = f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
        return text + (f" sha256:{node['digest']}" if "digest" in node else "")
    if "value" not in node:
        return node["type"]
    value = node["value"]
    shown = json.dumps(value, ensure_ascii=False) if node["type"] == "str" else str(value)
    return f"{node['type']} {shown}"


def _entries(skeleton: dict[str, Any]) -> list[tuple[Path, bool, str]]:
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
            leaf = _leaf(node)
        else:
            if not (node["kind"] == "dict" and node["type"] is None and node["children"]):
                chain.append(_item(node))
            stack.extend(children(node, path))
        if chain:
            out.append((path, True, " > ".join(chain)))
        if leaf is not None:
            out.append((path, False, leaf))
    return sorted(out, key=sort_key)


def _parse_type(text: str, i: int) -> tuple[str, int]:
    if text.startswith('"', i):
        name, end = json.JSONDecoder().raw_decode(text, i)
        if not isinstance(name, str):
            raise ValueError("a quoted type name must be a JSON string")
        return name, end
    match = _BARE_TYPE.match(text, i)
    if match is None:
        raise ValueError("a type name is missing")
    return match.group(), match.end()


def _parse_container(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A container line: its wrappers (outermost first) and its base node, None for an implied dict."""
    wrappers: list[dict[str, Any]] = []
    i = 0
    while True:
        if text.startswith("wrapper ", i):
            name, i = _parse_type(text, i + len("wrapper "))
            metadata: Any = {}
            if text.startswith(" {", i):
                metadata, i = json.JSONDecoder().raw_decode(text, i + 1)
            wrappers.append({"kind": "wrapper", "type": name, "metadata": metadata})
            if i == len(text):
                return wrappers, None
            if not text.startswith(" > ", i):
                raise ValueError(f"expected ' > ' after a wrapper in {text!r}")
            i += len(" > ")
            continue
        rest = text[i:]
        if rest in ("list", "tuple"):
            return wrappers, {"kind": rest, "children": []}
        if rest == "dict":
            return wrappers, {"kind": "dict", "type": None, "keys": [], "children": []}
        for kind in ("dict", "node"):
            if rest.startswith(kind + " "):
                name, end = _parse_type(text, i + len(kind) + 1)
                if end != len(text):
                    raise ValueError(f"unexpected text after the type in {text!r}")
                return wrappers, {"kind": kind, "type": name, "keys": [], "children": []}
        match = _NAMEDTUPLE.fullmatch(rest)
        if match is None:
            raise ValueError(f"{text!r} is not a container")
        fields = match.group(2).split(",") if match.group(2) else []
        module, _, name = match.group(1).rpartition(".")
        node = {"kind": "namedtuple", "name": name, "fields": fields, "children": []}
        return wrappers, {**node, "module": module} if module else node


def _parse_leaf(text: str, path: Path, separator: str, values: bool) -> dict[str, Any]:
    if text == "none":
        return {"kind": "none"}
    tensor = _TENSOR.fullmatch(text)
    if tensor is not None:
        dtype, dims, digest = tensor.groups()
        shape = [int(d) for d in dims.split(",")] if dims else []
        node = {"kind": "tensor", "key": separator.join(map(str, path)), "dtype": dtype, "shape": shape}
        if digest is not None and values:
            node["digest"] = digest
        elif digest is not None:
            raise ValueError("a structure-only document holds no digests")
        return node
    scalar = _SCALAR.fullmatch(text)
    if scalar is None:
        raise ValueError(f"{text!r} is not a tensor, scalar or none")
    kind, shown = scalar.groups()
    if (shown is None) == values:
        raise ValueError("a scalar needs its value" if values else "a structure-only document holds no values")
    if shown is None:
        return {"kind": "scalar", "type": kind}
    value: Any = shown
    if kind == "bool":
        value = {"True": True, "False": False}.get(shown, shown)
    elif kind == "int":
        value = int(shown) if CANONICAL_INT.fullmatch(shown) else shown
    elif kind == "str":
        value = json.loads(shown) if shown.startswith('"') else None
    if not _SCALAR_CHECKS[kind](value):
        raise ValueError(f"{shown!r} is not a {kind} value")
    return {"kind": "scalar", "type": kind, "value": value}


def _ordered(node: dict[str, Any], keys: set[KeyPart], path: Path) -> list[KeyPart]:
    """The children's keys of a container in the order its node lists them."""
    kind = node["kind"]
    if kind in ("list", "tuple"):
        if not all(isinstance(k, int) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise ValueError(f"{spell_path(path)}/: a {kind}'s children are at the indices 0 to n-1")
        return list(range(len(keys)))
    if kind == "namedtuple":
        if set(keys) != set(node["fields"]):
            raise ValueError(f"{spell_path(path)}/: the namedtuple's children must be its fields {node['fields']}")
        return list(node["fields"])
    if kind not in ("dict", "node"):
        raise ValueError(f"{spell_path(path)}: a {kind} holds no children")
    if kind == "dict" and len({type(k) for k in keys}) > 1:
        raise ValueError(f"{spell_path(path)}/: a dict mixes int and str keys")
    return sorted(keys, key=part_key)


def _skeleton(entries: dict[str, Any], separator: str, values: bool) -> dict[str, Any]:
    """The skeleton a document's entries describe (raises ValueError, naming the entry)."""
    if len(entries) > MAX_NODES:
        raise ValueError(f"more than MAX_NODES={MAX_NODES} entries")
    if not entries:
        raise ValueError("no entries: even an empty tree has a line for its root")
    bases: dict[Path, dict[str, Any] | None] = {}
    wrappers: dict[Path, list[dict[str, Any]]] = {}
    for name, text in entries.items():
        try:
            if not isinstance(text, str):
                raise ValueError("the value must be a string")
            path, container = parse_name(name)
            if len(path) > MAX_DEPTH:
                raise ValueError(f"deeper than MAX_DEPTH={MAX_DEPTH}")
            if container:
                wrappers[path], base = _parse_container(text)
                if len(path) + len(wrappers[path]) > MAX_DEPTH:
                    raise ValueError(f"deeper than MAX_DEPTH={MAX_DEPTH}")
            else:
                base = _parse_leaf(text, path, separator, values)
            if base is not None and bases.get(path) is not None:
                raise ValueError("both a container and a leaf")
            if base is not None or path not in bases:
                bases[path] = base
        except ValueError as e:
            raise ValueError(f"{json.dumps(name, ensure_ascii=False)}: {e}") from None
    children: dict[Path, set[KeyPart]] = defaultdict(set)
    for path in list(bases):
        while path:
            parent = path[:-1]
            known = parent in children
            children[parent].add(path[-1])
            if known:
                break
            path = parent
    for path in children.keys() | bases.keys():
        if bases.get(path) is None:
            if path not in children:
                raise ValueError(f"{spell_path(path)}/: a wrapper around nothing")
            bases[path] = {"kind": "dict", "type": None, "keys": [], "children": []}

    def full(path: Path) -> dict[str, Any]:
        node = bases[path]
        for wrapper in reversed(wrappers.get(path, [])):
            node = {**wrapper, "child": node}
        return node  # type: ignore[return-value]

    for parent in sorted(children, key=len, reverse=True):
        node = bases[parent]
        assert node is not None
        keys = _ordered(node, children[parent], parent)
        node["children"] = [full((*parent, k)) for k in keys]
        if node["kind"] in ("dict", "node"):
            node["keys"] = keys
    return full(())


@dataclasses.dataclass(frozen=True)
class Schema:
    """A checkpoint's reviewed schema: what ``ckptschema schema`` writes and `load_schema` reads.

    Attributes:
        framework: the checkpoint's framework (``jax``, ``flax``, ...).
        separator: joins path parts into tensor keys.
        checksum: ``sha256`` when the tensors' digests are recorded, else None.
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
        for path, container, text in _entries(self.skeleton):
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


def _with_placeholders(node: dict[str, Any]) -> dict[str, Any]:
    if node["kind"] == "scalar":
        return {**node, "value": _PLACEHOLDERS.get(node["type"], "")}
    if "children" in node:
        return {**node, "children": [_with_placeholders(c) for c in node["children"]]}
    if "child" in node:
        return {**node, "child": _with_placeholders(node["child"])}
    return node


def parse_schema(text: str, where: str) -> Schema:
    """Parse a schema document, or the manifest JSON that earlier releases wrote as one.

    Raises:
        FormatError: naming `where` and the entry at fault, for anything that is not a valid
            document of a supported version.

    Example:
        >>> schema = parse_schema('{"ckptschema_schema": 2, "/w": "float32[3] sha256:' + "0" * 64 + '", '
        ...     '"framework": "jax", "separator": ".", "checksum": "sha256", "structure_only": false}', "s.json")
        >>> schema.skeleton["children"][0]["shape"], schema.checksum
        ([3], 'sha256')
    """
    try:
        data = strict_json(text, "schema document", max_objects=2 * MAX_NODES)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from e
    if not isinstance(data, dict):
        raise FormatError(f"{where}: a schema document is a JSON object, not a JSON {type(data).__name__}")
    if "ckptschema_schema" not in data:
        if "skeleton" in data:  # a document written before version 2: the manifest itself
            return Schema.of(parse_manifest(text, where))
        raise FormatError(
            f'{where}: not a schema document (no "ckptschema_schema"); write one with: ckptschema schema FILE'
        )
    version = data.pop("ckptschema_schema")
    if type(version) is not int or version < DOCUMENT_VERSION:
        raise FormatError(f"{where}: ckptschema_schema must be {DOCUMENT_VERSION}, found {version!r}")
    if version > DOCUMENT_VERSION:
        raise FormatError(
            f"{where}: schema document version {version} is newer than this ckptschema reads "
            f"(version {DOCUMENT_VERSION}); upgrade ckptschema"
        )
    missing = [k for k in _HEADER if k not in data]
    if missing:
        raise FormatError(f"{where}: schema document lacks {', '.join(map(repr, missing))}")
    framework, separator, checksum, structure_only = (data.pop(k) for k in _HEADER)
    if type(structure_only) is not bool:
        raise FormatError(f"{where}: structure_only must be true or false, found {structure_only!r}")
    try:
        skeleton = _skeleton(data, separator if isinstance(separator, str) else ".", not structure_only)
        checked = _with_placeholders(skeleton) if structure_only else skeleton
        fields = {"framework": framework, "separator": separator, "checksum": checksum}
        Manifest.from_data({"version": 1, **fields, "skeleton": checked})
    except (ValueError, RecursionError) as e:  # a Pydantic ValidationError among them
        raise FormatError(f"{where}: invalid schema document: {short_error(e)}") from e
    if structure_only and checksum is not None:
        raise FormatError(f"{where}: a structure-only document has checksum null")
    return Schema(framework, separator, checksum, skeleton, structure_only)


def document_json_schema() -> dict[str, Any]:
    """The JSON Schema of the schema document format (``schemas/schema-doc-v2.schema.json``).

    Example:
        >>> document_json_schema()["properties"]["ckptschema_schema"]
        {'const': 2}
    """
    manifest = json_schema()["properties"]
    item = _CONTAINER_ITEM
    return {
        "$id": f"https://ckptschema.dev/schemas/schema-doc-v{DOCUMENT_VERSION}.schema.json",
        "title": "SchemaDocument",
        "description": "A checkpoint's schema for review: one member per tree node, named by its path.",
        "type": "object",
        "properties": {
            "ckptschema_schema": {"const": DOCUMENT_VERSION},
            "framework": {k: v for k, v in manifest["framework"].items() if k != "default"},
            "separator": {k: v for k, v in manifest["separator"].items() if k != "default"},
            "checksum": {"enum": ["sha256", None]},
            "structure_only": {"type": "boolean"},
        },
        "required": ["ckptschema_schema", *_HEADER],
        "patternProperties": {
            _CONTAINER_KEY: {"type": "string", "pattern": rf"^(wrapper [\s\S]+ > )*{item}$"},
            _LEAF_KEY: {"type": "string", "pattern": _LEAF_VALUE},
        },
        "additionalProperties": False,
    }


def _schema_document(manifest: Manifest, structure_only: bool) -> str:
    return Schema.of(manifest, structure_only=structure_only).document()


_manifest.render_schema_document = _schema_document
