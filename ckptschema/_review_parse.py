"""Reading schema documents back: `parse_schema` turns the text into a `Schema`, and the JSON Schema of the format.

Each member is parsed by its kind (a container item, a tensor, a scalar, ``none``), the
skeleton is rebuilt in path order, and the result is validated as a manifest's lean form
is, so a document is held to the same rules as the file it was made from.
"""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from typing import Any

from ._dtypes import ALL_DTYPE_NAMES
from ._errors import FormatError
from ._json import strict_json
from ._limits import MAX_DEPTH, MAX_NODES, MAX_RANK
from ._manifest import file_skeleton
from ._manifest_file import _SCALAR_CHECKS, CHECKSUMS, json_schema, short_error, validate_data
from ._paths import CANONICAL_INT, Path, parse_name, part_key, spell_path
from ._review import _BARE_TYPE, _HEADER, DOCUMENT_VERSION, Schema
from ._skeleton import KeyPart

__all__ = ["document_json_schema", "parse_schema"]

_DTYPES = "|".join(sorted(ALL_DTYPE_NAMES, key=lambda n: (-len(n), n)))
_CHECKSUMS = "|".join(CHECKSUMS)
_TENSOR = re.compile(
    rf"({_DTYPES})\[((?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*)?\](?: ({_CHECKSUMS}):([0-9a-f]{{64}}))?"
)
_SCALAR = re.compile(r"(bool|int|float|str)(?: (.+))?", re.DOTALL)
_NAMEDTUPLE = re.compile(r"namedtuple ([^\s(),]+)\(([^\s()]*)\)")
#: Patterns of member names and values for the JSON Schema (the parser checks more).
#: They end in ``(?![\s\S])``, not ``$``: Python's ``$`` also matches before a final newline.
_END = r"(?![\s\S])"
_CONTAINER_KEY, _LEAF_KEY = rf"^/([\s\S]*/)?{_END}", rf"^(/[\s\S]*[^/])?{_END}"
_CONTAINER_ITEM = r"(list|tuple|dict|dict [\s\S]+|namedtuple [^\s(),]+\([^\s()]*\)|node [\s\S]+|wrapper [\s\S]+)"
_LEAF_VALUE = (
    rf"^(({_DTYPES})\[([0-9]+(,[0-9]+)*)?\]( ({_CHECKSUMS}):[0-9a-f]{{64}})?|none|bool( True| False)?"
    rf"|int( -?[0-9]+)?|float( [\s\S]+)?|str( \"[\s\S]*\")?){_END}"
)
#: What a scalar is checked with while a structure-only document (which has no values) is validated.
_PLACEHOLDERS = {"bool": False, "int": 0, "float": "0.0", "str": ""}


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


def _parse_leaf(text: str, path: Path, separator: str, checksum: Any, values: bool) -> dict[str, Any]:
    if text == "none":
        return {"kind": "none"}
    tensor = _TENSOR.fullmatch(text)
    if tensor is not None:
        dtype, dims, algorithm, digest = tensor.groups()
        shape = [int(d) for d in dims.split(",")] if dims else []
        if len(shape) > MAX_RANK:
            raise ValueError(f"rank {len(shape)} is above MAX_RANK={MAX_RANK}")
        node = {"kind": "tensor", "key": separator.join(map(str, path)), "dtype": dtype, "shape": shape}
        if digest is not None and not values:
            raise ValueError("a structure-only document holds no digests")
        if digest is not None and algorithm != checksum:
            raise ValueError(f"a {algorithm} digest in a document whose checksum is {checksum!r}")
        if digest is not None:
            node["digest"] = digest
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


def _skeleton(entries: dict[str, Any], separator: str, checksum: Any, values: bool) -> dict[str, Any]:
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
                base = _parse_leaf(text, path, separator, checksum, values)
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


def _with_placeholders(node: dict[str, Any]) -> dict[str, Any]:
    if node["kind"] == "scalar":
        return {**node, "value": _PLACEHOLDERS.get(node["type"], "")}
    if "children" in node:
        return {**node, "children": [_with_placeholders(c) for c in node["children"]]}
    if "child" in node:
        return {**node, "child": _with_placeholders(node["child"])}
    return node


def parse_schema(text: str, where: str) -> Schema:
    """Parse a schema document.

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
        skeleton = _skeleton(data, separator if isinstance(separator, str) else ".", checksum, not structure_only)
        checked = _with_placeholders(skeleton) if structure_only else skeleton
        digests: list[str] = []
        fields = {"framework": framework, "separator": separator, "checksum": checksum}
        lean = file_skeleton(checked, digests)
        if checksum is not None and not structure_only:
            fields["digests"] = base64.b64encode(bytes.fromhex("".join(digests))).decode("ascii")
        validate_data({"version": 1, **fields, "skeleton": lean})
        if checksum is not None and not structure_only and len(digests) != _tensor_count(lean):
            raise ValueError(f"a document whose checksum is {checksum!r} gives every tensor a digest")
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
            "checksum": {"enum": [*CHECKSUMS, None]},
            "structure_only": {"type": "boolean"},
        },
        "required": ["ckptschema_schema", *_HEADER],
        "patternProperties": {
            _CONTAINER_KEY: {"type": "string", "pattern": rf"^(wrapper [\s\S]+ > )*{item}{_END}"},
            _LEAF_KEY: {"type": "string", "pattern": _LEAF_VALUE},
        },
        "additionalProperties": False,
    }


def _tensor_count(lean: Any) -> int:
    """How many tensor leaves (dtype names) a lean skeleton has."""
    if isinstance(lean, str):
        return 1
    return sum(map(_tensor_count, lean.get("children", ()))) + (_tensor_count(lean["child"]) if "child" in lean else 0)
