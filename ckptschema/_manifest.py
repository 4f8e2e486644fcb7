"""The manifest: Pydantic v2 models of the JSON that a ckptschema file carries in its header.

The models are strict (no coercion: ``true`` is not an int, ``"3"`` is not a shape) and
forbid unknown fields, so the JSON they accept is exactly the JSON the skeleton functions
in `_tree` work on. `parse_manifest` is the only way bytes become a `Manifest`.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic import (
    ValidationError as PydanticValidationError,
)

from . import _tree
from ._dtypes import DTYPES
from ._errors import FormatError
from ._limits import MAX_DEPTH, MAX_FIELDS, MAX_NODES, MAX_RANK

__all__ = ["FORMAT_VERSION", "Manifest", "json_schema", "parse_manifest", "strict_json"]

#: The manifest format version this release writes and reads.
FORMAT_VERSION: Final = 1

DTypeName = Literal[tuple(DTYPES)]  # type: ignore[valid-type]
Key = StrictStr | StrictInt


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string holds a lone surrogate") from None
    return value


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TensorNode(_Node):
    """A tensor leaf: its key in the safetensors header, true dtype, shape and digest."""

    kind: Literal["tensor"]
    key: StrictStr
    dtype: DTypeName  # type: ignore[valid-type]
    shape: Annotated[list[NonNegativeInt], Field(max_length=MAX_RANK)]
    digest: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    _check_key = field_validator("key")(_check_text)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of bytes of tensor data."""
        return self.size * DTYPES[self.dtype].numpy.itemsize


class ScalarNode(_Node):
    """A Python scalar leaf kept in the manifest; floats are stored as their exact repr."""

    kind: Literal["scalar"]
    type: Literal["bool", "int", "float", "str"]
    value: StrictBool | StrictInt | StrictStr

    @model_validator(mode="after")
    def _value_matches_type(self) -> ScalarNode:
        ok = {
            "bool": lambda v: type(v) is bool,
            "int": lambda v: type(v) is int,
            "str": lambda v: type(v) is str and bool(_check_text(v) is v),
            "float": lambda v: type(v) is str and _is_float_repr(v),
        }[self.type](self.value)
        if not ok:
            raise ValueError(f"value {self.value!r} is not a {self.type} scalar")
        return self


def _is_float_repr(text: str) -> bool:
    try:
        return repr(float(text)) == text
    except ValueError:
        return False


class NoneNode(_Node):
    """``None`` (an empty pytree node)."""

    kind: Literal["none"]


class ListNode(_Node):
    """A list."""

    kind: Literal["list"]
    children: Annotated[list[Node], Field(max_length=MAX_FIELDS)]


class TupleNode(_Node):
    """A tuple."""

    kind: Literal["tuple"]
    children: Annotated[list[Node], Field(max_length=MAX_FIELDS)]


class NamedTupleNode(_Node):
    """A namedtuple: rebuilt as a fresh class of this name and fields, never imported."""

    kind: Literal["namedtuple"]
    name: StrictStr
    fields: Annotated[list[StrictStr], Field(max_length=MAX_FIELDS)]
    children: Annotated[list[Node], Field(max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _fields_are_valid(self) -> NamedTupleNode:
        if not _tree.valid_namedtuple(self.name, self.fields):
            raise ValueError(f"namedtuple {self.name!r} has invalid or duplicate field names")
        if len(self.fields) != len(self.children):
            raise ValueError(f"{len(self.fields)} fields but {len(self.children)} children")
        return self


def _unique_keys(keys: list[Any], children: list[Any]) -> None:
    if len(keys) != len(children):
        raise ValueError(f"{len(keys)} keys but {len(children)} children")
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys")
    for k in keys:
        if isinstance(k, str):
            _check_text(k)


class DictNode(_Node):
    """A dict (``type`` null) or an allow-listed mapping container such as ``flax.FrozenDict``."""

    kind: Literal["dict"]
    type: StrictStr | None = None
    keys: (
        Annotated[list[StrictStr], Field(max_length=MAX_FIELDS)]
        | Annotated[list[StrictInt], Field(max_length=MAX_FIELDS)]
    )
    children: Annotated[list[Node], Field(max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _keys_match_children(self) -> DictNode:
        _unique_keys(self.keys, self.children)
        return self


class WrapperNode(_Node):
    """An allow-listed one-child container with metadata, such as ``flax.nnx.Param``."""

    kind: Literal["wrapper"]
    type: StrictStr
    metadata: dict[StrictStr, StrictStr | StrictInt | StrictFloat | StrictBool | None]
    child: Node


class CustomNode(_Node):
    """Any other registered pytree node; only a template can rebuild it."""

    kind: Literal["node"]
    type: StrictStr
    keys: Annotated[list[Key], Field(max_length=MAX_FIELDS)]
    children: Annotated[list[Node], Field(max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _keys_match_children(self) -> CustomNode:
        _unique_keys(self.keys, self.children)
        return self


Node = Annotated[
    TensorNode | ScalarNode | NoneNode | ListNode | TupleNode | NamedTupleNode | DictNode | WrapperNode | CustomNode,
    Field(discriminator="kind"),
]


class Manifest(BaseModel):
    """The description of a whole checkpoint, stored in its header.

    Attributes:
        version: the manifest format version (`FORMAT_VERSION`).
        framework: ``jax``, ``flax``, ``flax.nnx``, ``haiku``, ``objax``, ...
        separator: joins path parts into tensor keys.
        checksum: the digest algorithm of the tensors' ``digest`` (``sha256``), or None.
        skeleton: the whole tree, containers and leaves.

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

    _data: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def data(self) -> dict[str, Any]:
        """The manifest as JSON data (what the header stores)."""
        if self._data is None:
            self._data = self.model_dump(mode="json")
        return self._data

    @functools.cached_property
    def tensors(self) -> dict[str, TensorNode]:
        """Every tensor leaf by its key, in file order."""
        return {n.key: n for n in _iter_models(self.skeleton) if isinstance(n, TensorNode)}

    @property
    def num_params(self) -> int:
        """Total number of tensor elements."""
        return sum(t.size for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        """Total bytes of tensor data."""
        return sum(t.nbytes for t in self.tensors.values())

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Manifest:
        """Validate JSON data (already parsed) into a `Manifest`, keeping the data as is."""
        _check_shape_of_tree(data.get("skeleton"))
        manifest = cls.model_validate(data)
        manifest._data = data
        return manifest

    def schema_document(self) -> str:
        """The manifest as a stable review document: keys sorted, indented, newline-ended."""
        return json.dumps(self.data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _iter_models(node: Any) -> Any:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, WrapperNode):
            stack.append(n.child)
        elif hasattr(n, "children"):
            stack.extend(reversed(n.children))


def _check_shape_of_tree(skeleton: Any) -> None:
    """Bound depth and node count before the recursive validators see the data."""
    count = 0
    stack = [(skeleton, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ValueError(f"skeleton has more than MAX_NODES={MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise ValueError(f"skeleton is deeper than MAX_DEPTH={MAX_DEPTH}")
        if not isinstance(node, dict):
            continue
        children = node.get("children")
        if isinstance(children, list):
            stack.extend((c, depth + 1) for c in children)
        child = node.get("child")
        if child is not None:
            stack.append((child, depth))


def strict_json(text: str | bytes, what: str, max_objects: int) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity and more than `max_objects` objects.

    Raises:
        ValueError: with a message saying what was wrong.
    """
    count = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > max_objects:
            raise ValueError(f"{what} holds more than {max_objects} objects")
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"{what} repeats the key {dup!r}")
        return obj

    def constant(name: str) -> Any:
        raise ValueError(f"{what} holds {name}, which is not JSON")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from None


def parse_manifest(text: str, where: str) -> Manifest:
    """Parse and validate the manifest JSON stored in a header.

    Raises:
        FormatError: for anything that is not a valid manifest of a supported version.
    """
    try:
        data = strict_json(text, "manifest", max_objects=2 * MAX_NODES)
    except ValueError as e:
        raise FormatError(f"{where}: {e}") from e
    if not isinstance(data, dict):
        raise FormatError(f"{where}: manifest is a JSON {type(data).__name__}, expected an object")
    version = data.get("version")
    if type(version) is int and version > FORMAT_VERSION:
        raise FormatError(
            f"{where}: manifest version {version} is newer than this ckptschema reads "
            f"(version {FORMAT_VERSION}); upgrade ckptschema"
        )
    try:
        return Manifest.from_data(data)
    except (PydanticValidationError, ValueError, RecursionError) as e:
        raise FormatError(f"{where}: invalid manifest: {_short(e)}") from e


def _short(error: Exception) -> str:
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


for _model in (ListNode, TupleNode, NamedTupleNode, DictNode, WrapperNode, CustomNode, Manifest):
    _model.model_rebuild()
