"""The manifest: Pydantic v2 models of the JSON that a ckptschema file carries in its header.

Skeleton nodes are strict ``TypedDict`` models: Pydantic checks them (no coercion: ``true``
is not an int, ``"3"`` is not a shape; unknown fields are refused) and hands back plain
dicts, which is exactly what the skeleton functions in `_skeleton` work on, at a fraction of
the cost of building an object per node. `Manifest` is the model users see.
`parse_manifest` is the only way text becomes a `Manifest`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeInt,
    StrictInt,
    StrictStr,
)
from pydantic import (
    ValidationError as PydanticValidationError,
)
from typing_extensions import TypedDict

from . import _containers, _namedtuples, _scalars, _skeleton
from ._dtypes import ALL_DTYPE_NAMES, DTYPES
from ._errors import FormatError
from ._json import check_keys, strict_json_counted
from ._limits import (
    MAX_FIELDS,
    MAX_METADATA,
    MAX_NODES,
    MAX_RANK,
    check_depth,
    check_nodes,
)

__all__ = ["FORMAT_KEYS", "FORMAT_VERSION", "Manifest", "TensorInfo", "json_schema", "parse_manifest", "with_metadata"]

#: The manifest format version this release writes and reads.
FORMAT_VERSION: Final = 1

#: Every dtype name of the format (fixed, whatever ml_dtypes version is installed).
DTypeName = Literal[ALL_DTYPE_NAMES]  # type: ignore[valid-type]
_STRICT = ConfigDict(extra="forbid", strict=True)
_Children = Annotated[list["Node"], Field(max_length=MAX_FIELDS)]


class TensorNode(TypedDict):
    """A tensor leaf: its key in the safetensors header, true dtype, shape and digest."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    kind: Literal["tensor"]
    key: str
    dtype: DTypeName  # type: ignore[valid-type]
    shape: Annotated[list[NonNegativeInt], Field(max_length=MAX_RANK)]
    digest: NotRequired[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]


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

Node = Annotated[
    TensorNode
    | _CheckedScalarNode
    | NoneNode
    | ListNode
    | TupleNode
    | _CheckedNamedTupleNode
    | _CheckedDictNode
    | WrapperNode
    | _CheckedCustomNode,
    Field(discriminator="kind"),
]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a manifest: key, dtype name, shape and sha256 digest (or None).

    Example:
        >>> import numpy as np, ckptschema
        >>> info = ckptschema.manifest_of({"w": np.zeros((3, 4), np.float16)}).tensors["w"]
        >>> info.dtype, info.shape, info.size, info.nbytes
        ('float16', (3, 4), 12, 24)
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    digest: str | None

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of bytes of tensor data."""
        return self.size * DTYPES[self.dtype].numpy.itemsize


class Manifest(BaseModel):
    """The description of a whole checkpoint, stored in its header.

    Attributes:
        version: the manifest format version (`FORMAT_VERSION`).
        framework: ``jax``, ``flax``, ``flax.nnx``, ``haiku``, ``objax``, ...
        separator: joins path parts into tensor keys.
        checksum: the digest algorithm of the tensors' ``digest`` (``sha256``), or None.
        skeleton: the whole tree as JSON data, containers and leaves (see the file format).

    Example:
        >>> import numpy as np, ckptschema
        >>> m = ckptschema.manifest_of({"w": np.zeros((3, 4), np.float32)})
        >>> m.framework, m.num_params, m.nbytes, list(m.tensors)
        ('jax', 12, 48, ['w'])
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Literal[1] = FORMAT_VERSION
    framework: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")] = "jax"
    separator: Annotated[StrictStr, Field(min_length=1, max_length=16)] = "."
    checksum: Literal["sha256"] | None = "sha256"
    skeleton: Node

    @property
    def data(self) -> dict[str, Any]:
        """The manifest as JSON data (what the header stores)."""
        return {
            "version": self.version,
            "framework": self.framework,
            "separator": self.separator,
            "checksum": self.checksum,
            "skeleton": self.skeleton,
        }

    @functools.cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """Every tensor by its key, in file order."""
        return {
            n["key"]: TensorInfo(n["key"], n["dtype"], tuple(n["shape"]), n.get("digest"))
            for _, n in _skeleton.iter_nodes(self.skeleton)  # type: ignore[arg-type]
            if n["kind"] == "tensor"
        }

    @property
    def num_params(self) -> int:
        """Total number of tensor elements."""
        return sum(t.size for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        """Total bytes of tensor data."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def metadata(self) -> dict[str, str]:
        """The header's user metadata: its ``__metadata__`` entries other than the manifest.

        What ``save(..., metadata=...)`` wrote (plus ``"format": "flax"`` for flax trees),
        filled by `read_manifest` (and `load`'s and `validate`'s reads) and by `manifest_of`.
        It is not part of the manifest's JSON, nor of equality: two checkpoints of the same
        tree have equal manifests whatever their notes.

        Example:
            >>> import numpy as np, ckptschema
            >>> _ = ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(2)}, metadata={"run": "7"})
            >>> ckptschema.read_manifest(tmp_path / "m.safetensors").metadata
            {'run': '7'}
        """
        return dict(self.__dict__.get("_header_metadata", {}))

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Manifest:
        """Validate JSON data (already parsed) into a `Manifest`.

        Raises:
            ValueError: (a Pydantic ``ValidationError`` among them) if it is not a valid manifest.
        """
        check_skeleton(data.get("skeleton"))
        return cls.model_validate(data)

    def schema_document(self, *, structure_only: bool = False) -> str:
        """The checkpoint's schema document for review: one line per leaf, sorted by path.

        See `ckptschema.Schema`; `structure_only` leaves out digests and scalar values.

        Example:
            >>> import numpy as np, ckptschema
            >>> manifest = ckptschema.manifest_of({"n": 1, "b": np.zeros(2, np.int8)}, checksum=None)
            >>> print(manifest.schema_document(), end="")
            {
              "ckptschema_schema": 2,
              "/b": "int8[2]",
              "/n": "int 1",
              "framework": "jax",
              "separator": ".",
              "checksum": null,
              "structure_only": false
            }
        """
        assert render_schema_document is not None, "set when the package imports ckptschema._review"
        return render_schema_document(self, structure_only)


#: Renders `Manifest.schema_document`: set by `_review`, the review format, which builds on
#: this module (so this one cannot import it); the package imports both.
render_schema_document: Callable[[Manifest, bool], str] | None = None


def with_metadata(manifest: Manifest, metadata: Mapping[str, str]) -> Manifest:
    """`manifest`, carrying the header's user metadata as `Manifest.metadata` (outside its fields)."""
    object.__setattr__(manifest, "_header_metadata", dict(metadata))
    return manifest


def check_skeleton(skeleton: Any) -> None:
    """Bound node count (`MAX_NODES`) and depth (`MAX_DEPTH`) before the recursive validators see the data.

    The one check of both limits: the reader runs it on a parsed manifest and `save` on
    the skeleton it is about to write. The root is depth 0; every child, a wrapper's child
    included, is one deeper.

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
            stack.extend((c, depth + 1) for c in children)
        child = node.get("child")
        if child is not None:
            count += 1
            check_nodes(count)
            stack.append((child, depth + 1))


#: The names of the format that keys of a valid manifest hold: the fields of the manifest
#: and of each node kind, and every wrapper metadata key; the most frequent first.
FORMAT_KEYS = sorted(
    set(Manifest.model_fields).union(
        *(
            node.__required_keys__ | node.__optional_keys__
            for node in (TensorNode, ScalarNode, NoneNode, ListNode, TupleNode, NamedTupleNode, DictNode)
        ),
        WrapperNode.__required_keys__,
        CustomNode.__required_keys__,
        *_containers.WRAPPER_METADATA.values(),
    ),
    key=("kind", "key", "dtype", "shape", "digest", "children", "type", "keys", "child", "metadata").__contains__,
    reverse=True,
)


def parse_manifest(text: str, where: str) -> Manifest:
    """Parse and validate the manifest JSON stored in a header.

    Raises:
        FormatError: for anything that is not a valid manifest of a supported version.
    """
    try:
        check_keys(text, FORMAT_KEYS)
        data, compact_objects = strict_json_counted(text, "manifest", max_objects=2 * MAX_NODES)
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
        if compact_objects is None or compact_objects > MAX_NODES:
            # A compact document is nested at most 200 JSON levels (so its skeleton is at
            # most 200 deep, under MAX_DEPTH) and has fewer nodes than objects: only
            # others need the walk.
            check_skeleton(data.get("skeleton"))
        return Manifest.model_validate(data)
    except (PydanticValidationError, ValueError, RecursionError) as e:
        raise FormatError(f"{where}: invalid manifest: {short_error(e)}") from e


def short_error(error: Exception) -> str:
    """One line for a validation error: Pydantic's first three problems by location, no URL, no input."""
    if isinstance(error, PydanticValidationError):
        first = error.errors(include_url=False, include_input=False)[:3]
        parts = ["/".join(map(str, e["loc"])) + ": " + e["msg"] for e in first]
        more = error.error_count() - len(first)
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return str(error) or type(error).__name__


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest format (what ``schemas/`` holds).

    Example:
        >>> json_schema()["title"]
        'Manifest'
    """
    schema = Manifest.model_json_schema(mode="validation")
    schema["$id"] = f"https://ckptschema.dev/schemas/manifest-v{FORMAT_VERSION}.schema.json"
    return schema
