"""`SavePlan`: everything one save writes, worked out and checked before a byte is written.

tree → skeleton + arrays (`_flatten.flatten`) → manifest data → header bytes; `check` runs the
reader's own validation and limits on the very text that will be written.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Mapping
from typing import Any

from . import _header, _shards, _tensors
from ._distributed import spans_processes
from ._dtypes import DTYPES
from ._errors import CkptSchemaError
from ._flatten import flatten
from ._format import MANIFEST_KEY, PLACEHOLDER_DIGEST
from ._json import check_json_text, compact_json
from ._limits import check_header_bytes, check_json_values, check_tensors
from ._manifest import Manifest, with_metadata
from ._manifest_file import CHECKSUMS, FORMAT_KEYS, FORMAT_VERSION, short_error, validate_data

__all__ = ["SavePlan"]


class SavePlan:
    """Everything a save writes, worked out once: the manifest, the arrays, the header."""

    def __init__(
        self,
        tree: Any,
        *,
        metadata: Mapping[str, str] | None,
        separator: str,
        framework: str | None,
        checksum: str | None,
    ) -> None:
        if checksum not in (*CHECKSUMS, None):
            raise CkptSchemaError(f"checksum={checksum!r} is not supported; use 'blake3', 'sha256' or None")
        if not isinstance(separator, str) or not separator:
            raise CkptSchemaError(f"separator={separator!r} must be a non-empty string")
        flat = flatten(tree, separator)
        self.framework = framework or flat.framework or "jax"
        self.metadata = _user_metadata(metadata, self.framework)
        self.checksum = checksum
        self.nodes = flat.tensors
        self._manifest = Manifest.model_construct(
            version=FORMAT_VERSION,
            framework=self.framework,
            separator=separator,
            checksum=checksum,
            skeleton=flat.skeleton,
        )
        leaves = [flat.leaves[n["key"]] for n in self.nodes]
        #: Whether some leaf is a `jax.Array` whose devices are not all this process's own.
        self.spans_processes = any(map(spans_processes, leaves))
        #: Each tensor as a C-contiguous little-endian numpy array; an array that spans
        #: processes stays as it is (each process writes its own blocks of it).
        self.arrays = [
            leaf if spans_processes(leaf) else _tensors.to_numpy(leaf, DTYPES[n["dtype"]], n["key"])
            for n, leaf in zip(self.nodes, leaves)
        ]
        self.layout = [
            (n["key"], DTYPES[n["dtype"]].code, DTYPES[n["dtype"]].header_shape(n["shape"]), _nbytes(n))
            for n in self.nodes
        ]
        self.placeholders = [PLACEHOLDER_DIGEST if checksum else None for _ in self.nodes]
        self._text: str | None = None

    @functools.cached_property
    def entries(self) -> str:
        """The tensor part of a single-file header (`_header.entries_json`); shards make their own."""
        return _header.entries_json(self.layout)

    def check(self, where: str, max_shard_bytes: int | None = None) -> None:
        """Refuse, before anything is written, a tree whose file a reader would refuse.

        The manifest is validated as a reader validates it, and every reader limit is
        checked on the very text that will be written (with placeholder digests, which
        have the real digests' length), through the reader's own check functions.

        Raises:
            CkptSchemaError: one line naming `where`, the problem and, for a limit, the limit.
        """
        hint = ""
        try:
            data = self._manifest.data  # no digests yet: placeholders of the real ones' length take their place
            if self.checksum is not None:
                data["digests"] = _base64(self.placeholders)
            validate_data(data)
            check_tensors(len(self.nodes))
            self._text = compact_json(data)
            check_json_text(self._text, "manifest", FORMAT_KEYS)
            hint = _HEADER_HINT
            if max_shard_bytes is None:
                _check_header(self.header(self.placeholders))
            else:
                self._check_sharded(max_shard_bytes)
        except ValueError as e:
            raise CkptSchemaError(f"{where}: cannot save: {short_error(e)}{hint}") from e

    def _check_sharded(self, max_shard_bytes: int) -> None:
        """`check` for a sharded save: the index and every shard's header."""
        groups = _shards.plan_shards([size for *_, size in self.layout], max_shard_bytes)
        name = _shards.shard_name(len(groups), len(groups), PLACEHOLDER_DIGEST[:8])
        weight_map: dict[str, str] = {}
        for group in groups:
            _check_header(_header.header_bytes(_header.entries_json(self.layout[i] for i in group), self.metadata))
            weight_map.update((self.nodes[i]["key"], name) for i in group)
        index = io.BytesIO()
        total = sum(size for *_, size in self.layout)
        _shards.write_index(index, self.manifest_text(self.placeholders), total, weight_map)
        check_header_bytes(len(index.getvalue()), "index")
        check_json_values(index.getvalue().decode("utf-8"), "index")

    def manifest(self) -> Manifest:
        """The manifest, digests included, built without validating it again: `check` has
        validated this very data with placeholder digests, and real digests differ only in
        their bytes. It carries the header's user metadata, as `read_manifest` gives it."""
        return with_metadata(self._manifest, self.metadata)

    def set_digests(self, digests: list[str | None]) -> None:
        for node, digest in zip(self.nodes, digests):
            if digest is not None:
                node["digest"] = digest

    def manifest_text(self, digests: list[str | None]) -> str:
        """The manifest JSON text for these digests (after `check`).

        Only the last field, ``digests``, depends on them: the text `check` rendered with
        placeholders gets these spliced in, base64 of the same length.
        """
        assert self._text is not None, "check() renders the text first"
        if self.checksum is None:
            return self._text
        encoded = _base64(digests)
        return f'{self._text[: -len(encoded) - 2]}{encoded}"}}'

    def header(self, digests: list[str | None]) -> bytes:
        """The single-file header bytes for these digests: placeholders give the same length."""
        return _header.header_bytes(self.entries, {**self.metadata, MANIFEST_KEY: self.manifest_text(digests)})

    def write(self, out: Any) -> Manifest:
        """Stream the file into `out`."""
        digests = _tensors.write_file(out, self.header, self.arrays, self.checksum)
        self.set_digests(digests)
        return self.manifest()


def _nbytes(node: dict[str, Any]) -> int:
    """The bytes of a tensor node's data."""
    return DTYPES[node["dtype"]].numpy.itemsize * math.prod(node["shape"])


def _base64(digests: list[str | None]) -> str:
    """Hex digests as the manifest's ``digests`` field: their bytes, concatenated, in base64."""
    return base64.b64encode(bytes.fromhex("".join(digests))).decode("ascii")  # type: ignore[arg-type]


def _check_header(header: bytes) -> None:
    """The reader's limits on a length-prefixed header about to be written.

    Its integers are offsets and dimensions, never longer than `MAX_INT_DIGITS` (the
    manifest's are checked in `check`): of the text checks only the value bound can fail.
    """
    check_header_bytes(len(header) - 8)
    check_json_values(header[8:].decode("utf-8"), "header")


#: What to do about a header or index over its limit (a sharded index holds the same manifest: no help).
_HEADER_HINT = (
    " (readers refuse larger ones); each tensor takes about 110 bytes plus its key and its path's last part, "
    "so use shorter keys or separator=, checksum=None (43 bytes less per tensor), or several checkpoints"
)


def _user_metadata(metadata: Mapping[str, str] | None, framework: str) -> dict[str, str]:
    result = {"format": "flax"} if framework.startswith("flax") else {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CkptSchemaError(f"metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key == MANIFEST_KEY:
            raise CkptSchemaError(f"metadata key {MANIFEST_KEY!r} is reserved for the manifest")
        result[key] = value
    return result
