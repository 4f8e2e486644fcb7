"""The public functions: save, load, dumps, loads, read_manifest, manifest_of, validate."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import IO, Any, TypeVar, cast

import jax
import numpy as np

from . import _format, _progress, _remote, _shards, _storage
from ._agreement import Subtree, check_agreement, lookup_containers, select
from ._dtypes import BY_CODE, DTYPES, jax_can_hold
from ._errors import CkptSchemaError, FormatError, Issue, ValidationError
from ._format import MANIFEST_KEY, PLACEHOLDER_DIGEST
from ._json import check_json_text, compact_json
from ._limits import MAX_HEADER_BYTES, check_header_bytes, check_json_values, check_tensors
from ._manifest import (
    FORMAT_KEYS,
    FORMAT_VERSION,
    Manifest,
    parse_manifest,
    short_error,
    with_metadata,
)
from ._placement import place, scalar_like
from ._review import Schema, parse_schema
from ._storage import Entry, Header, Source
from ._tree import KeyPart, flatten, iter_nodes, keypath, rebuild, scalar_value, unflatten
from ._validate import Report, compare, scalar_kind_matches

__all__ = ["dumps", "load", "loads", "manifest_of", "read_manifest", "save", "validate"]

PathLike = str | os.PathLike[str]
F = TypeVar("F", bound=Callable[..., Any])


def _gc_paused(fn: F) -> F:
    """Run `fn` with Python's cyclic garbage collector paused.

    Saving or loading a tree allocates tens of thousands of small, acyclic objects (skeleton
    dicts, keys, arrays); each allocation burst can trigger a collection that scans the
    caller's whole heap, so without this a 20,000-leaf load costs 1.8x more, and more the
    bigger the program. The collector's state is restored on the way out.
    """

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return cast(F, paused)


# ---------------------------------------------------------------------------------- saving


class _Plan:
    """Everything a save writes, worked out once: the manifest data, the arrays, the header."""

    def __init__(
        self,
        tree: Any,
        *,
        metadata: Mapping[str, str] | None,
        separator: str,
        framework: str | None,
        checksum: str | None,
    ) -> None:
        if checksum not in ("sha256", None):
            raise CkptSchemaError(f"checksum={checksum!r} is not supported; use 'sha256' or None")
        if not isinstance(separator, str) or not separator:
            raise CkptSchemaError(f"separator={separator!r} must be a non-empty string")
        flat = flatten(tree, separator)
        self.framework = framework or flat.framework or "jax"
        self.metadata = _user_metadata(metadata, self.framework)
        self.checksum = checksum
        self._pieces: list[bytes] | None = None
        self._first: bytes | None = None
        self.data: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "framework": self.framework,
            "separator": separator,
            "checksum": checksum,
            "skeleton": flat.skeleton,
        }
        self.nodes = flat.tensors
        self.arrays = [_storage.to_numpy(flat.leaves[n["key"]], DTYPES[n["dtype"]], n["key"]) for n in self.nodes]
        self.layout = [
            (n["key"], DTYPES[n["dtype"]].code, DTYPES[n["dtype"]].header_shape(n["shape"]), a.nbytes)
            for n, a in zip(self.nodes, self.arrays)
        ]
        self.placeholders = [PLACEHOLDER_DIGEST if checksum else None for _ in self.nodes]

    @functools.cached_property
    def entries(self) -> str:
        """The tensor part of a single-file header (`_storage.entries_json`); shards make their own."""
        return _storage.entries_json(self.layout)

    def check(self, where: str, max_shard_bytes: int | None = None) -> None:
        """Refuse, before anything is written, a tree whose file a reader would refuse.

        The manifest is validated as a reader validates it, and every reader limit is
        checked on the very text that will be written (with placeholder digests, which
        have the real digests' length), through the reader's own check functions.

        Raises:
            CkptSchemaError: one line naming `where`, the problem and, for a limit, the limit.
        """
        self.set_digests(self.placeholders)
        hint = ""
        try:
            Manifest.from_data(self.data)
            check_tensors(len(self.nodes))
            manifest_text = compact_json(self.data)
            check_json_text(manifest_text, "manifest", FORMAT_KEYS)
            hint = _HEADER_HINT
            if max_shard_bytes is None:
                self._first = self._render(manifest_text)
                _check_header(self._first)
            else:
                self._check_sharded(manifest_text, max_shard_bytes)
        except ValueError as e:
            raise CkptSchemaError(f"{where}: cannot save: {short_error(e)}{hint}") from e

    def _check_sharded(self, manifest_text: str, max_shard_bytes: int) -> None:
        """`check` for a sharded save: the index and every shard's header."""
        groups = _shards.plan_shards([a.nbytes for a in self.arrays], max_shard_bytes)
        name = _shards.shard_name(len(groups), len(groups), PLACEHOLDER_DIGEST[:8])
        weight_map: dict[str, str] = {}
        for group in groups:
            _check_header(_storage.header_bytes(_storage.entries_json(self.layout[i] for i in group), self.metadata))
            weight_map.update((self.nodes[i]["key"], name) for i in group)
        index = io.BytesIO()
        _shards.write_index(index, manifest_text, sum(a.nbytes for a in self.arrays), weight_map)
        check_header_bytes(len(index.getvalue()), "index")
        check_json_values(index.getvalue().decode("utf-8"), "index")

    def manifest(self) -> Manifest:
        """The manifest, digests included, built without validating it again: `check` has
        validated this very data with placeholder digests, and real digests differ only in
        their hex digits. It carries the header's user metadata, as `read_manifest` gives it."""
        return with_metadata(Manifest.model_construct(**self.data), self.metadata)

    def set_digests(self, digests: list[str | None]) -> None:
        for node, digest in zip(self.nodes, digests):
            if digest is not None:
                node["digest"] = digest

    def header(self, digests: list[str | None]) -> bytes:
        """The header bytes for these digests.

        A checksummed save asks twice: with placeholders, to fix the header's length before
        any data is written (`check` has already rendered that one), then with the real
        digests. The manifest is rendered once: the second header puts the digests where
        the first has its placeholders (once per tensor, in file order), or is rendered
        again if a user string held the same bytes.
        """
        if self._first is not None and digests == self.placeholders:
            return self._first
        pieces = self._pieces
        if pieces is not None and len(pieces) == len(digests) + 1 and None not in digests:
            marked = [_DIGEST_FIELD + d.encode() for d in digests]  # type: ignore[union-attr]
            return b"".join(piece for pair in zip(pieces, [*marked, b""]) for piece in pair)
        self.set_digests(digests)
        return self._render(compact_json(self.data))

    def _render(self, manifest_text: str) -> bytes:
        header = _storage.header_bytes(self.entries, {**self.metadata, MANIFEST_KEY: manifest_text})
        if self._pieces is None and self.checksum is not None:
            self._pieces = header.split(_DIGEST_FIELD + _PLACEHOLDER)
        return header

    def write(self, out: Any) -> Manifest:
        """Stream the file into `out`."""
        digests = _storage.write_file(out, self.header, self.arrays, hashes=self.checksum is not None)
        self.set_digests(digests)
        return self.manifest()


def _check_header(header: bytes) -> None:
    """The reader's limits on a length-prefixed header about to be written.

    Its integers are offsets and dimensions, never longer than `MAX_INT_DIGITS` (the
    manifest's are checked in `check`): of the text checks only the value bound can fail.
    """
    check_header_bytes(len(header) - 8)
    check_json_values(header[8:].decode("utf-8"), "header")


#: What to do about a header or index over its limit (a sharded index holds the same manifest: no help).
_HEADER_HINT = (
    " (readers refuse larger ones); each tensor takes about 220 bytes plus twice its key, so use shorter keys "
    "or separator=, checksum=None (80 bytes less per tensor), or several checkpoints"
)

#: How a tensor's digest field reads inside the header (the manifest is a JSON string there).
_DIGEST_FIELD = b'\\"digest\\":\\"'
_PLACEHOLDER = PLACEHOLDER_DIGEST.encode()


def _user_metadata(metadata: Mapping[str, str] | None, framework: str) -> dict[str, str]:
    result = {"format": "flax"} if framework.startswith("flax") else {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CkptSchemaError(f"metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key == MANIFEST_KEY:
            raise CkptSchemaError(f"metadata key {MANIFEST_KEY!r} is reserved for the manifest")
        result[key] = value
    return result


@_gc_paused
def save(
    path: PathLike,
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "sha256",
    max_shard_size: int | str | None = None,
    progress: bool = False,
) -> Manifest:
    """Save a pytree as a safetensors file whose header holds its manifest.

    The write is atomic: a reader, or a crash at any instant, sees the old file or the
    new one. Tensors are streamed from their own buffers; nothing concatenates them.

    Args:
        path: the file to write, or an fsspec URL (``s3://bucket/model.safetensors``); with
            ``max_shard_size``, a local directory.
        tree: any pytree of arrays, Python scalars and containers.
        metadata: extra ``str -> str`` entries for the header's ``__metadata__``.
        separator: joins path parts into tensor keys (``params.Dense_0.kernel``).
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: ``"sha256"`` (default) records each tensor's digest; None skips it.
        max_shard_size: write a sharded checkpoint instead: safetensors shards of at most
            this many bytes (an int, or a string such as ``"2GB"`` or ``"512MiB"``; a larger
            tensor gets a shard of its own) and ``model.safetensors.index.json`` in the
            Hugging Face layout, holding the manifest. Still atomic: the index is replaced
            last, and shards of the previous save are removed only after it.
        progress: show a progress bar over the bytes written (only when stderr is a terminal).

    Returns:
        The `Manifest` written, checksums included.

    Raises:
        CkptSchemaError: for a leaf that cannot be stored, two leaves whose keys collide, or
            a file that a reader would refuse (a limit of ``ckptschema._limits``, such as
            ``MAX_HEADER_BYTES`` or ``MAX_DEPTH``, named in the message): all before any
            file is created or replaced.

    Example:
        >>> import jax.numpy as jnp, ckptschema
        >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
        >>> manifest = ckptschema.save(tmp_path / "model.safetensors", {"params": params})
        >>> sorted(manifest.tensors)
        ['params.Dense_0.bias', 'params.Dense_0.kernel']
    """
    plan = _Plan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    where = os.fspath(path)
    if max_shard_size is not None:
        if _remote.is_url(path):
            raise CkptSchemaError(f"{path}: sharded saves (max_shard_size=) go to local directories only")
        max_bytes = _shards.parse_size(max_shard_size)
        plan.check(where, max_bytes)
        return _save_sharded(path, plan, max_bytes, progress)
    plan.check(where)
    if _remote.is_url(path):
        return _save_remote(path, plan)  # type: ignore[arg-type]
    try:
        total = sum(a.nbytes for a in plan.arrays)
        with (
            _storage.atomic_file(path) as out,
            _progress.writing(out, total, f"saving {_name(path)}", progress) as tracked,
        ):
            return plan.write(tracked)
    except OSError as e:
        raise CkptSchemaError(f"{os.fspath(path)}: cannot write ({e.strerror or e})") from e


@_gc_paused
def dumps(
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "sha256",
    max_shard_size: int | str | None = None,
    progress: bool = False,
) -> bytes:
    """The bytes `save` would write for one file, as a `bytes` object.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        metadata: extra ``str -> str`` entries for the header's ``__metadata__``.
        separator: joins path parts into tensor keys (``params.Dense_0.kernel``).
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: ``"sha256"`` (default) records each tensor's digest; None skips it.
        max_shard_size: must be None: the bytes are one file (save a sharded checkpoint with `save`).
        progress: show a progress bar over the bytes made (only when stderr is a terminal).

    Returns:
        The checkpoint's bytes; `loads` reads them back.

    Raises:
        CkptSchemaError: as `save` does, and for a ``max_shard_size``.

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.arange(3, dtype=np.int32)}, metadata={"run": "7"})
        >>> ckptschema.loads(data)["w"].tolist()
        [0, 1, 2]
    """
    if max_shard_size is not None:
        raise CkptSchemaError("dumps makes one file's bytes; max_shard_size= needs save() and a directory")
    plan = _Plan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    plan.check("<bytes>")
    out = io.BytesIO()
    with _progress.writing(out, sum(a.nbytes for a in plan.arrays), "saving <bytes>", progress) as tracked:
        plan.write(tracked)
    return out.getvalue()


@_gc_paused
def manifest_of(
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "sha256",
    max_shard_size: int | str | None = None,
) -> Manifest:
    """The `Manifest` that `save` would record for a tree, checksums included; nothing is written.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        metadata: the header metadata the save would write (checked, and kept as `Manifest.metadata`).
        separator: joins path parts into tensor keys.
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: ``"sha256"`` (default) records each tensor's digest; None skips it.
        max_shard_size: checked as `save` checks it; a sharded save records the same manifest.

    Returns:
        The `Manifest`, equal to what `save` returns and `read_manifest` reads back.

    Example:
        >>> import numpy as np, ckptschema
        >>> ckptschema.manifest_of({"w": np.zeros(2, np.float32)}).tensors["w"].digest[:12]
        'af5570f5a181'
    """
    plan = _Plan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    if max_shard_size is not None:
        _shards.parse_size(max_shard_size)
    plan.check("<manifest_of>")
    plan.set_digests([_format.digest(a) if plan.checksum else None for a in plan.arrays])
    return plan.manifest()


def _save_remote(url: str, plan: _Plan) -> Manifest:
    """Save to an fsspec URL: hash first, then one sequential write (stores cannot seek back)."""
    try:
        digests = _remote.write(url, plan.header, plan.arrays, hashes=plan.checksum is not None)
    except CkptSchemaError:
        raise
    except Exception as e:  # network and permission errors of every store
        raise CkptSchemaError(f"{url}: cannot write ({type(e).__name__}: {e})") from e
    plan.set_digests(digests)
    return plan.manifest()


def _save_sharded(directory: PathLike, plan: _Plan, max_bytes: int, progress: bool) -> Manifest:
    """Write shards under fresh names, then the index (atomically), then drop the old shards.

    What killed saves left in the directory goes first (`_shards.remove_leftovers`); this
    save holds the lock of its first shard until its index is in place, so no other save
    takes its shards for leftovers.
    """
    where = os.fspath(directory)
    if os.path.exists(where) and not os.path.isdir(where):
        raise CkptSchemaError(f"{where}: max_shard_size= saves a directory, but this path is a file")
    plan.set_digests([PLACEHOLDER_DIGEST if plan.checksum else None for _ in plan.nodes])
    plan.manifest()  # refuses a tree no manifest can describe before anything is written
    index = os.path.join(where, _shards.INDEX_NAME)
    groups = _shards.plan_shards([a.nbytes for a in plan.arrays], max_bytes)
    total = sum(a.nbytes for a in plan.arrays)
    written: list[str] = []
    with contextlib.ExitStack() as held:
        try:
            os.makedirs(where, exist_ok=True)
            _shards.remove_leftovers(where)
            previous = _shards.own_shards_of(index)
            token = _shards.new_token(where)
            names = [_shards.shard_name(number, len(groups), token) for number in range(1, len(groups) + 1)]
            with _progress.bar(total, f"saving {_name(where)}", progress) as advance:
                for name, group in zip(names, groups):
                    header = _storage.header_bytes(_storage.entries_json(plan.layout[i] for i in group), plan.metadata)
                    written.append(os.path.join(where, name))
                    with _storage.atomic_file(written[-1], clean=False) as out:  # a new name: no leftovers
                        if len(written) == 1:
                            held.callback(os.close, os.dup(out.fileno()))  # the lock, until the index is in place
                        arrays = [plan.arrays[i] for i in group]
                        digests = _storage.write_stream(
                            _progress.tracked_file(out, advance), header, arrays, bool(plan.checksum)
                        )
                    for i, digest in zip(group, digests):
                        if digest is not None:
                            plan.nodes[i]["digest"] = digest
            weight_map = {plan.nodes[i]["key"]: name for name, group in zip(names, groups) for i in group}
            with _storage.atomic_file(index) as out:
                _shards.write_index(out, compact_json(plan.data), total, weight_map)
        except BaseException as e:
            for path in reversed(written):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if isinstance(e, OSError):
                raise CkptSchemaError(f"{where}: cannot write ({e.strerror or e})") from e
            raise
        for stale in previous - set(names):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(where, stale))
    return plan.manifest()


# --------------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _opened(source: PathLike | bytes | bytearray | memoryview) -> Iterator[tuple[Source, Header, Manifest | None]]:
    """The checked header and manifest of a checkpoint: a file, bytes, or a sharded directory or index."""
    src: Source
    if _shards.is_sharded(source):
        src, header = _shards.open_sharded(source)  # type: ignore[arg-type]
    else:
        src = _storage.open_source(source)
        try:
            header = _storage.read_header(src)
        except BaseException:
            src.close()
            raise
    try:
        text = header.manifest_text
        manifest = None if text is None else parse_manifest(text, src.name)
        if manifest is not None:
            check_agreement(manifest, header, src.name)
            with_metadata(manifest, {k: v for k, v in header.metadata.items() if k != MANIFEST_KEY})
        yield src, header, manifest
    finally:
        src.close()


@_gc_paused
def read_manifest(path: PathLike) -> Manifest:
    """Read a checkpoint's manifest from its header; no tensor bytes are read.

    Args:
        path: the checkpoint: a file, an fsspec URL, or a sharded checkpoint's directory or index.

    Returns:
        The `Manifest`, with the header's user metadata as `Manifest.metadata`.

    Raises:
        CheckpointNotFoundError: if there is no checkpoint at `path` (also a `FileNotFoundError`).
        FormatError: if the file is not a valid checkpoint or has no manifest.

    Example:
        >>> import numpy as np, ckptschema
        >>> tree = {"w": np.zeros((2, 2), np.float16)}
        >>> _ = ckptschema.save(tmp_path / "m.safetensors", tree, metadata={"step": "100"})
        >>> manifest = ckptschema.read_manifest(tmp_path / "m.safetensors")
        >>> manifest.tensors["w"].shape, manifest.metadata
        ((2, 2), {'step': '100'})
    """
    with _opened(path) as (src, _, manifest):
        if manifest is None:
            raise FormatError(f"{src.name}: no ckptschema manifest in the header (a plain safetensors file)")
        return manifest


@_gc_paused
def load(
    path: PathLike,
    template: Any = None,
    *,
    strict: bool = True,
    subtree: Subtree = None,
    verify: bool = False,
    separator: str | None = None,
    progress: bool = False,
    mmap: bool = False,
) -> Any:
    """Load a checkpoint, checked against a template when one is given.

    Without a template the exact saved tree comes back (containers, key order and types,
    None, namedtuples, FrozenDict, scalars) with `jax.Array` leaves. With a template,
    everything is checked before any tensor is read: structure, paths, shapes, dtypes.
    Nothing is cast or broadcast. The result has the template's own types and each leaf is
    placed like its template leaf; a leaf sharded over several devices is read block by
    block, each device getting the bytes of its own block only (with ``verify=True`` the
    whole tensor is read and hashed first).

    Args:
        path: the checkpoint: a file, an fsspec URL, or a sharded checkpoint's directory or index.
        template: a pytree whose leaves are arrays, numpy arrays, `jax.ShapeDtypeStruct`
            (e.g. ``jax.eval_shape(model.init, ...)``) or Python scalars.
        strict: if False, tensors in the file that the template lacks are allowed
            (reported as a warning); missing ones are still an error.
        subtree: load only this part, as a separator-joined path (``"params.Dense_0"``)
            or a tuple of keys; only its bytes are read.
        verify: check every tensor's sha256 checksum; raise `IntegrityError` on the first bad one.
            Files saved with ``checksum=None``, and plain safetensors files, have none to check.
        separator: for files without a manifest, the separator that joined their keys.
        progress: show a progress bar over the bytes read (only when stderr is a terminal).
        mmap: give numpy template leaves as read-only views of a memory map of the file:
            nothing is copied, and nothing is read until used. The file must then not be
            truncated or rewritten in place while they live (the process would die of
            SIGBUS); replacing it by rename, as `save` does, is safe. Other leaves are read
            as usual.

    Returns:
        The tree.

    Raises:
        ValidationError: listing every mismatch with the template, by path.
        CheckpointNotFoundError: if there is no checkpoint at `path` (also a `FileNotFoundError`,
            so ``except FileNotFoundError:`` starts afresh when there is none yet).
        FormatError: if the file is not a valid checkpoint.
        IntegrityError: with ``verify=True``, for a tensor whose bytes changed.

    Example:
        >>> import jax, jax.numpy as jnp, ckptschema
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
        >>> _ = ckptschema.save(tmp_path / "p.safetensors", params)
        >>> abstract = jax.eval_shape(lambda: params)
        >>> ckptschema.load(tmp_path / "p.safetensors", template=abstract)["w"].shape
        (2, 3)
    """
    with _opened(path) as (source, header, manifest), _tracked(source, header, "loading", progress) as tracked:
        return _load(tracked, header, manifest, template, strict, subtree, verify, separator, mmap)


@_gc_paused
def loads(
    data: bytes | bytearray | memoryview,
    template: Any = None,
    *,
    strict: bool = True,
    subtree: Subtree = None,
    verify: bool = False,
    separator: str | None = None,
    progress: bool = False,
    mmap: bool = False,
) -> Any:
    """Load a checkpoint from bytes (as made by `dumps`); the options are those of `load`.

    Args:
        data: the checkpoint's bytes.
        template: as for `load`.
        strict: if False, tensors that the template lacks are allowed (reported as a warning).
        subtree: load only this part, as a separator-joined path or a tuple of keys.
        verify: check every tensor's sha256 checksum; raise `IntegrityError` on the first bad one.
        separator: for data without a manifest, the separator that joined their keys.
        progress: show a progress bar over the bytes read (only when stderr is a terminal).
        mmap: give numpy template leaves as read-only views of `data` instead of copies.

    Returns:
        The tree.

    Raises:
        ValidationError: listing every mismatch with the template, by path.
        FormatError: if the bytes are not a valid checkpoint.
        IntegrityError: with ``verify=True``, for a tensor whose bytes changed.

    Example:
        >>> import numpy as np, ckptschema
        >>> ckptschema.loads(ckptschema.dumps({"a": [1, 2.5, None]}))
        {'a': [1, 2.5, None]}
    """
    with _opened(data) as (source, header, manifest), _tracked(source, header, "loading", progress) as tracked:
        return _load(tracked, header, manifest, template, strict, subtree, verify, separator, mmap)


def _load(
    source: Source,
    header: Header,
    manifest: Manifest | None,
    template: Any,
    strict: bool,
    subtree: Subtree,
    verify: bool,
    separator: str | None,
    mmap: bool,
) -> Any:
    if manifest is None:
        return _load_plain(source, header, template, strict, subtree, separator or ".", mmap)
    node, prefix = select(manifest, subtree, source.name)
    if template is None:
        lookup_containers(node, source.name)
        tensors = [n for _, n in iter_nodes(node) if n["kind"] == "tensor"]
        arrays = _read_all(source, header, tensors, verify)
        return unflatten(node, lambda n: place(arrays[id(n)], n["dtype"]))
    expected = flatten(template, manifest.separator, template=True).skeleton
    result = compare(node, expected, prefix)
    _raise_or_warn(result.issues, strict, source.name)
    spread = {} if verify else _spread_leaves(expected, result.pairs)
    tensors = [n for n in result.pairs.values() if n["kind"] == "tensor" and id(n) not in spread]
    arrays = _read_all(source, header, tensors, verify, _numpy_leaves(expected, result.pairs) if mmap else set())

    def fill(t: dict[str, Any]) -> Any:
        found = result.pairs[id(t)]
        if found["kind"] == "scalar":
            return scalar_like(scalar_value(found), t["_like"])
        if id(found) in spread:
            return _read_spread(source, header.entries[found["key"]], found, spread[id(found)])
        return place(arrays[id(found)], found["dtype"], t["_like"])

    return rebuild(expected, fill)


def _spread_leaves(expected: dict[str, Any], pairs: dict[int, dict[str, Any]]) -> dict[int, Any]:
    """The sharding of each file tensor whose template leaf spreads it over several devices, by ``id``."""
    spread = {}
    for _, t in iter_nodes(expected):
        like = t.get("_like")
        sharding = None if isinstance(like, np.ndarray) else getattr(like, "sharding", None)
        found = pairs.get(id(t))
        if (
            sharding is not None
            and len(sharding.device_set) > 1
            and found is not None
            and found["kind"] == "tensor"
            and jax_can_hold(found["dtype"])
        ):
            spread[id(found)] = sharding
    return spread


def _read_spread(source: Source, entry: Entry, node: dict[str, Any], sharding: Any) -> jax.Array:
    """A tensor built shard by shard: each addressable device gets the bytes of its own block.

    Each distinct block is read once (replicas share it); no device's data passes through a
    whole host copy of the tensor.
    """
    dtype, shape = DTYPES[node["dtype"]], tuple(node["shape"])
    blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

    def block(index: tuple[slice, ...] | None) -> np.ndarray:
        index = index or ()
        key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
        if key not in blocks:
            blocks[key] = _storage.read_slice(source, entry, dtype, shape, index)
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, block)


def _numpy_leaves(expected: dict[str, Any], pairs: dict[int, dict[str, Any]]) -> set[int]:
    """The ``id`` of each file tensor that a numpy template leaf will receive."""
    found = (pairs.get(id(t)) for _, t in iter_nodes(expected) if isinstance(t.get("_like"), np.ndarray))
    return {id(n) for n in found if n is not None and n["kind"] == "tensor"}


def _read_all(
    source: Source, header: Header, nodes: list[dict[str, Any]], verify: bool, mapped: AbstractSet[int] = frozenset()
) -> dict[int, np.ndarray]:
    """The arrays of tensor nodes by node ``id``, read in as few calls as the layout allows;
    those in `mapped` are views of a memory map instead."""

    def wanted(some: list[dict[str, Any]]) -> list[tuple[Entry, Any, list[int]]]:
        return [(header.entries[n["key"]], DTYPES[n["dtype"]], n["shape"]) for n in some]

    viewed = [n for n in nodes if id(n) in mapped]
    nodes = [n for n in nodes if id(n) not in mapped]
    arrays = _storage.read_tensors(source, wanted(nodes))
    if viewed:
        nodes += viewed
        arrays += _storage.map_tensors(source, source.map(), wanted(viewed))
    if verify:
        for n, array in zip(nodes, arrays):
            _storage.verify(array, n.get("digest"), n["key"], source.name)
    return {id(n): array for n, array in zip(nodes, arrays)}


def _raise_or_warn(issues: list[Issue], strict: bool, where: str) -> None:
    if not strict:
        unexpected = [i for i in issues if i.kind == "unexpected"]
        issues = [i for i in issues if i.kind != "unexpected"]
        if unexpected:
            paths = ", ".join(i.path for i in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
            warnings.warn(f"{where}: ignored {len(unexpected)} tensor(s) not in the template: {paths}", stacklevel=4)
    if issues:
        hint = ""
        if strict and any(i.kind == "unexpected" for i in issues):
            hint = "pass strict=False to ignore tensors the template does not have"
        raise ValidationError(f"{where} does not match the template", issues, hint)


# ------------------------------------------------------------------- files with no manifest


def _plain_candidates(
    skeleton: dict[str, Any], separator: str
) -> Iterator[tuple[dict[str, Any], tuple[KeyPart, ...], list[str]]]:
    """Each template leaf with the keys other tools give it: ``a.b.0`` and pytree2safetensors' ``@a@b#0``.

    pytree2safetensors marks each part of a path: ``@`` a dict key, ``#`` a sequence index, ``.``
    an attribute, except that a path starting with an attribute drops its ``.``
    (``layers#0@w`` for an equinox Module's ``layers[0]["w"]``).
    """

    def walk(node: dict[str, Any], path: tuple[KeyPart, ...], p2s: str) -> Iterator[Any]:
        kind = node["kind"]
        if kind in ("tensor", "scalar"):
            yield node, path, [separator.join(map(str, path)), p2s[1:] if p2s.startswith(".") else p2s]
        elif kind == "wrapper":
            yield from walk(node["child"], path, p2s)
        elif kind in ("list", "tuple"):
            for i, c in enumerate(node["children"]):
                yield from walk(c, (*path, i), f"{p2s}#{i}")
        elif kind == "dict":
            for k, c in zip(node["keys"], node["children"]):
                yield from walk(c, (*path, k), f"{p2s}@{k}")
        elif kind == "namedtuple":
            for f, c in zip(node["fields"], node["children"]):
                yield from walk(c, (*path, f), f"{p2s}.{f}")
        elif kind == "node":
            for k, c in zip(node["keys"], node["children"]):
                yield from walk(c, (*path, k), f"{p2s}#{k}" if isinstance(k, int) else f"{p2s}.{k}")

    return walk(skeleton, (), "")


def _match_plain(header: Header, template: Any, separator: str) -> tuple[dict[str, Any], list[Issue], dict[int, str]]:
    """Match a template's leaves to the keys of a file with no manifest; reads no tensor bytes.

    Returns the template's skeleton, every mismatch, and each matched leaf's key by node ``id``.
    """
    expected = flatten(template, separator, template=True).skeleton
    issues: list[Issue] = []
    matched: dict[int, str] = {}
    seen: set[str] = set()
    for node, path, candidates in _plain_candidates(expected, separator):
        key = next((k for k in candidates if k in header.entries), None)
        what = _describe_expected(node)
        if key is None:
            issues.append(Issue("missing", keypath(path), None, what))
            continue
        seen.add(key)
        entry = header.entries[key]
        dtype = BY_CODE.get(entry.code)
        found = f"{dtype.name if dtype else entry.code}"
        want_shape = tuple(node["shape"]) if node["kind"] == "tensor" else ()
        want_dtype = node["dtype"] if node["kind"] == "tensor" else None
        if entry.shape != want_shape:
            issues.append(Issue("shape", keypath(path), str(entry.shape), str(want_shape)))
        elif want_dtype is not None and found != want_dtype:
            issues.append(Issue("dtype", keypath(path), found, want_dtype))
        elif want_dtype is None and (dtype is None or not scalar_kind_matches(node["type"], dtype.numpy)):
            issues.append(Issue("dtype", keypath(path), found, node["type"]))
        else:
            matched[id(node)] = key
    for key in sorted(header.entries.keys() - seen):
        e = header.entries[key]
        dtype = BY_CODE.get(e.code)
        issues.append(
            Issue("unexpected", key, f"{dtype.name if dtype else e.code}[{','.join(map(str, e.shape))}]", None)
        )
    return expected, issues, matched


def _load_plain(
    source: Source, header: Header, template: Any, strict: bool, subtree: Subtree, separator: str, mmap: bool
) -> Any:
    if template is None:
        if subtree is not None:
            raise CkptSchemaError(f"{source.name}: subtree= needs a manifest or a template; this file has neither")
        return {
            key: place(
                _storage.read_tensor(source, e, BY_CODE.get(e.code, DTYPES["uint8"]), e.shape),
                BY_CODE.get(e.code, DTYPES["uint8"]).name,
            )
            for key, e in header.entries.items()
        }
    expected, issues, matched = _match_plain(header, template, separator)
    _raise_or_warn(issues, strict, source.name)
    mapped = functools.cache(source.map)

    def fill(t: dict[str, Any]) -> Any:
        key = matched[id(t)]
        entry = header.entries[key]
        dtype = BY_CODE[entry.code]
        if mmap and isinstance(t["_like"], np.ndarray):
            (array,) = _storage.map_tensors(source, mapped(), [(entry, dtype, entry.shape)])
        else:
            array = _storage.read_tensor(source, entry, dtype, entry.shape)
        if t["kind"] == "scalar":
            return type(t["_like"])(array[()].item())
        return place(array, dtype.name, t["_like"])

    return rebuild(expected, fill)


def _describe_expected(node: dict[str, Any]) -> str:
    if node["kind"] == "tensor":
        return f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
    return f"{node['type']} scalar"


# ------------------------------------------------------------------------------ validation


@_gc_paused
def validate(
    source: PathLike | bytes | bytearray | memoryview,
    against: Any = None,
    *,
    deep: bool = False,
    progress: bool = False,
) -> Report:
    """Check a checkpoint without loading it; mismatches are reported, never raised.

    Args:
        source: the checkpoint (as for `load`), or its bytes.
        against: what to check it against: None (the file alone), a `Schema`, a `Manifest`
            or the path of a schema document (``ckptschema schema`` output: also compares
            scalar values and checksums, unless it is structure-only), or a template pytree.
        deep: also re-hash every tensor and compare with the recorded checksums.
        progress: with ``deep``, show a progress bar over the bytes hashed (only when
            stderr is a terminal).

    Returns:
        A `Report`; ``report.ok`` is True when nothing is wrong.

    Raises:
        CheckpointNotFoundError: if there is no checkpoint at `source` (also a `FileNotFoundError`).
        FormatError: if the file (or schema) cannot be read at all.

    Example:
        >>> import numpy as np, ckptschema
        >>> data = ckptschema.dumps({"w": np.zeros(3, np.float32)})
        >>> ckptschema.validate(data, deep=True).ok
        True
    """
    with _opened(source) as (src, header, manifest):
        if manifest is None:
            if against is None or isinstance(against, (Manifest, Schema, str, os.PathLike)):
                return Report(
                    src.name, [Issue("structure", "<root>", "no manifest", "a ckptschema manifest", "schema")]
                )
            return Report(src.name, _match_plain(header, against, ".")[1])
        issues = _against(manifest, against)
        if deep:
            with _tracked(src, header, "verifying", progress) as tracked:
                issues += _deep_issues(tracked, header, manifest)
        return Report(src.name, issues)


def _against(manifest: Manifest, against: Any) -> list[Issue]:
    root = manifest.data["skeleton"]
    if against is None:
        return []
    if isinstance(against, (str, os.PathLike)):
        against = load_schema(against)
    if isinstance(against, Manifest):
        against = Schema.of(against)
    if isinstance(against, Schema):
        return compare(root, against.skeleton, against="schema", values=not against.structure_only).issues
    expected = flatten(against, manifest.separator, template=True).skeleton
    return compare(root, expected).issues


def _deep_issues(source: Source, header: Header, manifest: Manifest) -> list[Issue]:
    issues = []
    for path, node in iter_nodes(manifest.data["skeleton"]):
        if node["kind"] == "tensor" and node.get("digest"):
            array = _storage.read_tensor(source, header.entries[node["key"]], DTYPES[node["dtype"]], node["shape"])
            actual = _format.digest(array)
            if actual != node["digest"]:
                issues.append(Issue("checksum", keypath(path), actual, node["digest"], "manifest"))
    return issues


def _name(path: PathLike) -> str:
    """A file's name for a progress bar."""
    where = os.fspath(path)
    return os.path.basename(where.rstrip("/")) or where


def _tracked(source: Source, header: Header, verb: str, progress: bool) -> contextlib.AbstractContextManager[Source]:
    """`source`, its tensor reads advancing a progress bar over the data section when asked."""
    return _progress.reading(source, source.size - header.data_start, f"{verb} {_name(source.name)}", progress)


def load_schema(source: PathLike | IO[bytes]) -> Schema:
    """Read a schema document: ``ckptschema schema`` output, or the manifest JSON older releases wrote.

    Args:
        source: a path (a regular file, or a pipe such as ``<(...)``, read to its end) or a
            binary stream such as ``sys.stdin.buffer``.

    Raises:
        FormatError: if it cannot be read, is larger than ``MAX_HEADER_BYTES``, or is not a
            valid schema document.

    Example:
        >>> import io, numpy as np, ckptschema
        >>> text = ckptschema.manifest_of({"w": np.zeros(3, np.float32)}).schema_document()
        >>> schema = ckptschema.load_schema(io.BytesIO(text.encode()))
        >>> schema.framework, schema.skeleton["keys"]
        ('jax', ['w'])
    """
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        try:
            with open(where, "rb") as f:
                data = f.read(MAX_HEADER_BYTES + 1)
        except OSError as e:
            raise FormatError(f"{where}: cannot read schema ({e.strerror or e})") from e
    else:
        where = str(getattr(source, "name", "<stream>"))
        data = source.read(MAX_HEADER_BYTES + 1)
    if len(data) > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: schema document larger than MAX_HEADER_BYTES={MAX_HEADER_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: a schema document is UTF-8 JSON text ({e.reason} at byte {e.start})") from e
    return parse_schema(text, where)
