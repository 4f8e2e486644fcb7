"""The `Manifest` users see: the whole tree, every tensor with its key, dtype, shape and digest.

It is built from a file's lean manifest and its header (`_agreement`) or from a tree being
saved (`_save_plan`); `Manifest.data` is the lean form a file stores (`_manifest_file`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from . import _skeleton
from ._dtypes import DTYPES
from ._manifest_file import FORMAT_VERSION, Checksum

__all__ = ["FORMAT_VERSION", "Manifest", "TensorInfo", "file_skeleton", "with_metadata"]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a manifest: key, dtype name, shape and hex digest (or None).

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
        checksum: the digest algorithm of the tensors' ``digest`` (``blake3`` or ``sha256``), or None.
        skeleton: the whole tree as JSON data, containers and leaves; each tensor a
            ``{"kind": "tensor", "key", "dtype", "shape", "digest"}`` node (``digest`` absent
            without a checksum).

    Example:
        >>> import numpy as np, ckptschema
        >>> m = ckptschema.manifest_of({"w": np.zeros((3, 4), np.float32)})
        >>> m.framework, m.num_params, m.nbytes, list(m.tensors)
        ('jax', 12, 48, ['w'])
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = FORMAT_VERSION
    framework: str = "jax"
    separator: str = "."
    checksum: Checksum | None = "blake3"
    skeleton: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        """The manifest as JSON data, in the lean form the header stores (see the file format).

        Example:
            >>> import numpy as np, ckptschema
            >>> ckptschema.manifest_of({"w": np.zeros(2, np.int8)}, checksum=None).data["skeleton"]
            {'kind': 'dict', 'type': None, 'keys': ['w'], 'children': ['int8']}
        """
        digests: list[str] = []
        data: dict[str, Any] = {
            "version": self.version,
            "framework": self.framework,
            "separator": self.separator,
            "checksum": self.checksum,
            "skeleton": file_skeleton(self.skeleton, digests),
        }
        if self.checksum is not None:
            data["digests"] = base64.b64encode(bytes.fromhex("".join(digests))).decode("ascii")
        return data

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


def file_skeleton(node: dict[str, Any], digests: list[str]) -> Any:
    """The lean form of a skeleton node, as files store it: each tensor node becomes its dtype
    name and its digest is appended to `digests` (skeleton order); other nodes are kept."""
    kind = node["kind"]
    if kind == "tensor":
        if "digest" in node:
            digests.append(node["digest"])
        return node["dtype"]
    if kind == "wrapper":
        return {**node, "child": file_skeleton(node["child"], digests)}
    if "children" in node:
        return {**node, "children": [file_skeleton(c, digests) for c in node["children"]]}
    return node
