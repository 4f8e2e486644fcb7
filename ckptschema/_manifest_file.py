"""The manifest as a file stores it: Pydantic v2 models of its JSON, its parser and its JSON Schema.

The stored manifest is lean: a tensor leaf is only its dtype name (a JSON string); its key,
shape and byte range are the header's, and all digests are one base64 string in tensor
order (`ManifestFile.digests`). `_agreement` proves a parsed manifest describes exactly its
header's tensors and builds the `Manifest` users see from the two.

Skeleton nodes are strict ``TypedDict`` models: Pydantic checks them (no coercion: ``true``
is not an int, ``"3"`` is not a key; unknown fields are refused) and hands back plain
dicts and strings, at a fraction of the cost of building an object per node.
`parse_manifest` is the only way text becomes manifest data.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)
from pydantic import (
    ValidationError as PydanticValidationError,
)
from typing_extensions import TypedDict

from . import _containers, _namedtuples, _scalars
from ._digests import ALGORITHMS
from ._dtypes import ALL_DTYPE_NAMES
from ._errors import FormatError
from ._json import check_keys, strict_json
from ._limits import (
    MAX_FIELDS,
    MAX_METADATA,
    MAX_NODES,
    check_depth,
    check_nodes,
)

__all__ = [
    "CHECKSUMS",
    "FORMAT_KEYS",
    "FORMAT_VERSION",
    "Checksum",
    "ManifestFile",
    "json_schema",
    "parse_manifest",
    "short_error",
    "validate_data",
]

#: The manifest format version this release writes and reads.
FORMAT_VERSION: Final = 1

#: Every dtype name of the format (fixed, whatever ml_dtypes version is installed).
DTypeName = Literal[ALL_DTYPE_NAMES]  # type: ignore[valid-type]
_STRICT = ConfigDict(extra="forbid", strict=True)
_Children = Annotated[list["Node"], Field(max_length=MAX_FIELDS)]


def _is_float_text(text: str) -> bool:
    try:
        return _scalars.float_text(_scalars.float_value(text)) == text
    except ValueError:
        return False


_SCALAR_CHECKS = {
    "bool": lambda v: type(v) is bool,
    "int": lambda v: type(v) is int,
    "str": lambda v: type(v) is str,
    "float": lambda v: type(v) is str and _is_float_text(v),
}


def _scalar_value_matches(node: dict[str, Any]) -> dict[str, Any]:
    if not _SCALAR_CHECKS[node["type"]](node["value"]):
        raise ValueError(f"value {node['value']!r} is not a {node['type']} scalar")
    return node


class ScalarNode(TypedDict):
    """A Python scalar leaf kept in the manifest; a float is its repr, or ``nan:0x`` and its 16 hex digits of bits
    for a NaN other than ``float("nan")``."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["scalar"]
    type: Literal["bool", "int", "float", "str"]
    value: bool | int | str


_CheckedScalarNode = Annotated[ScalarNode, AfterValidator(_scalar_value_matches)]


class NoneNode(TypedDict):
    """``None`` (an empty pytree node)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["none"]


class ListNode(TypedDict):
    """A list."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["list"]
    children: _Children


class TupleNode(TypedDict):
    """A tuple."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["tuple"]
    children: _Children


def _valid_namedtuple(node: dict[str, Any]) -> dict[str, Any]:
    if not _namedtuples.valid(node["name"], node["fields"]):
        raise ValueError(
            f"namedtuple {node['name']!r} has an invalid name or invalid field names, or field names "
            f"that are equal after Unicode NFKC normalisation"
        )
    if len(node["fields"]) != len(node["children"]):
        raise ValueError(f"{len(node['fields'])} fields but {len(node['children'])} children")
    if "module" in node and not _namedtuples.valid_module(node["module"]):
        raise ValueError(f"namedtuple {node['name']!r} names the module {node['module']!r}, which is not a module name")
    return node


class NamedTupleNode(TypedDict):
    """A namedtuple: its class name, field names and (optionally) the module defining it.

    Without a template it comes back as that class if it is already imported (never
    importing anything), else as a fresh class of this name and fields.
    """

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["namedtuple"]
    name: str
    fields: Annotated[list[str], Field(max_length=MAX_FIELDS)]
    children: _Children
    module: NotRequired[str]


_CheckedNamedTupleNode = Annotated[NamedTupleNode, AfterValidator(_valid_namedtuple)]


def _unique_keys(node: dict[str, Any]) -> dict[str, Any]:
    keys, children = node["keys"], node["children"]
    if len(keys) != len(children):
        raise ValueError(f"{len(keys)} keys but {len(children)} children")
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")
    return node


class DictNode(TypedDict):
    """A dict (``type`` null) or an allow-listed mapping container such as ``flax.FrozenDict``."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["dict"]
    type: str | None
    keys: Annotated[list[str], Field(max_length=MAX_FIELDS)] | Annotated[list[int], Field(max_length=MAX_FIELDS)]
    children: _Children


_CheckedDictNode = Annotated[DictNode, AfterValidator(_unique_keys)]


def _metadata_size(metadata: Any) -> Any:
    if isinstance(metadata, dict) and len(metadata) > MAX_METADATA:
        raise ValueError(f"wrapper metadata has {len(metadata)} entries, more than MAX_METADATA={MAX_METADATA}")
    return metadata


class WrapperNode(TypedDict):
    """An allow-listed one-child container with metadata, such as ``flax.nnx.Param``.

    Which names are wrappers and which metadata each may hold is checked against the
    header with the allow-list (`ckptschema._containers.refusal`).
    """

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["wrapper"]
    type: str
    metadata: Annotated[
        dict[str, str | int | FiniteFloat | bool | None],
        Field(max_length=MAX_METADATA),
        BeforeValidator(_metadata_size),
    ]
    child: Node


class CustomNode(TypedDict):
    """Any other registered pytree node; only a template can rebuild it."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["node"]
    type: str
    keys: Annotated[list[StrictStr | StrictInt], Field(max_length=MAX_FIELDS)]
    children: _Children


_CheckedCustomNode = Annotated[CustomNode, AfterValidator(_unique_keys)]

#: A tensor leaf: the name of its true dtype. Its key is its path joined by the separator,
#: its shape and bytes are those of that key's header entry.
TensorLeaf = DTypeName


def _node_tag(node: Any) -> str | None:
    """Which node model checks `node`: ``tensor`` for a string, else its ``kind`` (None: no model)."""
    if isinstance(node, str):
        return "tensor"
    kind = node.get("kind") if isinstance(node, dict) else None
    return kind if kind in _KINDS else None


_KINDS = ("scalar", "none", "list", "tuple", "namedtuple", "dict", "wrapper", "node")

#: One tagged union: a validation error names the node's kind (``skeleton/dict/children/0/scalar``).
Node = Annotated[
    Annotated[TensorLeaf, Tag("tensor")]
    | Annotated[_CheckedScalarNode, Tag("scalar")]
    | Annotated[NoneNode, Tag("none")]
    | Annotated[ListNode, Tag("list")]
    | Annotated[TupleNode, Tag("tuple")]
    | Annotated[_CheckedNamedTupleNode, Tag("namedtuple")]
    | Annotated[_CheckedDictNode, Tag("dict")]
    | Annotated[WrapperNode, Tag("wrapper")]
    | Annotated[_CheckedCustomNode, Tag("node")],
    Discriminator(
        _node_tag,
        custom_error_type="node",
        custom_error_message="a node is a dtype name (a tensor) or an object with a known kind",
    ),
]


#: The digest algorithms a manifest may name (`ManifestFile.checksum`).
Checksum = Literal[ALGORITHMS]  # type: ignore[valid-type]

#: The names of `Checksum`.
CHECKSUMS: tuple[str, ...] = ALGORITHMS

#: Standard base64 (RFC 4648, with padding) of whole 32-byte digests.
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class ManifestFile(BaseModel):
    """The manifest JSON as a file stores it (what `parse_manifest` validates and `json_schema` describes).

    Attributes:
        version: the manifest format version (`FORMAT_VERSION`).
        framework: ``jax``, ``flax``, ``flax.nnx``, ``haiku``, ``objax``, ...
        separator: joins path parts into tensor keys.
        checksum: the digest algorithm of `digests`, or None when the save recorded none.
        skeleton: the whole tree: containers, scalars, and each tensor as its dtype name.
        digests: every tensor's 32-byte digest, in skeleton order, concatenated and base64
            encoded; present exactly when `checksum` is not None.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="Manifest")

    version: Literal[1] = FORMAT_VERSION
    framework: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")] = "jax"
    separator: Annotated[StrictStr, Field(min_length=1, max_length=16)] = "."
    checksum: Checksum | None = None
    skeleton: Node
    digests: Annotated[StrictStr, Field(pattern=_BASE64)] | None = None

    @model_validator(mode="after")
    def _digests_with_checksum(self) -> ManifestFile:
        if (self.checksum is None) != (self.digests is None):
            raise ValueError("digests are present exactly when checksum is not null")
        return self


def validate_data(data: dict[str, Any]) -> ManifestFile:
    """Validate manifest JSON data (already parsed), limits first.

    Raises:
        ValueError: (a Pydantic ``ValidationError`` among them) if it is not a valid manifest.
    """
    check_skeleton(data.get("skeleton"))
    return ManifestFile.model_validate(data)


def check_skeleton(skeleton: Any) -> None:
    """Bound node count (`MAX_NODES`) and depth (`MAX_DEPTH`) before the recursive validators see the data.

    The one check of both limits: the reader runs it on a parsed manifest and `save` on
    the skeleton it is about to write. The root is depth 0; every child, a wrapper's child
    included, is one deeper. Tensor leaves (strings) are counted with their parent's children.

    Raises:
        LimitError: naming the limit.
    """
    count = 1  # nodes seen so far: counted when pushed, so a list of a million children is refused before its walk
    stack = [(skeleton, 0)]
    while stack:
        node, depth = stack.pop()
        check_depth(depth)
        if not isinstance(node, dict):
            continue
        children = node.get("children")
        if isinstance(children, list):
            count += len(children)
            check_nodes(count)
            if children:
                check_depth(depth + 1)
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict))
        child = node.get("child")
        if child is not None:
            count += 1
            check_nodes(count)
            stack.append((child, depth + 1))


#: The names of the format that keys of a valid manifest hold: the fields of the manifest
#: and of each node kind, and every wrapper metadata key; the most frequent first.
FORMAT_KEYS = sorted(
    set(ManifestFile.model_fields).union(
        *(
            node.__required_keys__ | node.__optional_keys__
            for node in (ScalarNode, NoneNode, ListNode, TupleNode, NamedTupleNode, DictNode)
        ),
        WrapperNode.__required_keys__,
        CustomNode.__required_keys__,
        *_containers.WRAPPER_METADATA.values(),
    ),
    key=("kind", "children", "type", "keys", "child", "metadata").__contains__,
    reverse=True,
)


def parse_manifest(text: str, where: str) -> ManifestFile:
    """Parse and validate the manifest JSON stored in a header.

    Raises:
        FormatError: for anything that is not a valid manifest of a supported version.
    """
    try:
        check_keys(text, FORMAT_KEYS)
        data = strict_json(text, "manifest", max_objects=2 * MAX_NODES)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from e
    if not isinstance(data, dict):
        raise FormatError(f"{where}: manifest is a JSON {type(data).__name__}, expected an object")
    version = data.get("version")
    if type(version) is not int:  # bool is an int to Pydantic's Literal[1]; absent is not version 1
        raise FormatError(f"{where}: manifest version must be an integer, found {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{where}: manifest version {version} is newer than this ckptschema reads "
            f"(version {FORMAT_VERSION}); upgrade ckptschema"
        )
    try:
        check_skeleton(data.get("skeleton"))
        return ManifestFile.model_validate(data)
    except (PydanticValidationError, ValueError, RecursionError) as e:
        raise FormatError(f"{where}: invalid manifest: {short_error(e)}") from e


def short_error(error: Exception) -> str:
    """One line for a validation error: Pydantic's first three problems by location, no URL, no input
    (but a tensor leaf that is no dtype name is shown, cut to 40 characters)."""
    if isinstance(error, PydanticValidationError):
        first = error.errors(include_url=False)[:3]
        parts = ["/".join(map(str, e["loc"])) + ": " + _message(e) for e in first]
        more = error.error_count() - len(first)
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return str(error) or type(error).__name__


def _message(error: Any) -> str:
    if error["type"] == "literal_error" and error["loc"][-1:] == ("tensor",):
        return f"{repr(error['input'])[:40]} is not a dtype name of the format"
    return str(error["msg"])


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest format (what ``schemas/`` holds).

    Example:
        >>> json_schema()["title"]
        'Manifest'
    """
    schema = ManifestFile.model_json_schema(mode="validation")
    schema["$id"] = f"https://ckptschema.dev/schemas/manifest-v{FORMAT_VERSION}.schema.json"
    return schema
