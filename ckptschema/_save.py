"""The save functions: `save` (a file, a URL or a sharded directory), `dumps`, `manifest_of`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
from collections.abc import Mapping
from typing import Any

from . import _atomic, _digests, _header, _progress, _remote, _shards, _tensors
from ._errors import CkptSchemaError
from ._gcpause import gc_paused
from ._manifest import Manifest
from ._multihost_remote import save_to_bucket
from ._multihost_save import DEFAULT_SHARD_SIZE, save_across_processes
from ._opening import PathLike, display_name
from ._save_plan import SavePlan

__all__ = ["dumps", "manifest_of", "save"]


@gc_paused
def save(
    path: PathLike,
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "blake3",
    max_shard_size: int | str | None = None,
    progress: bool = False,
) -> Manifest:
    """Save a pytree as a safetensors file whose header holds its manifest.

    The write is atomic: a reader, or a crash at any instant, sees the old file or the
    new one. Tensors are streamed from their own buffers; nothing concatenates them.

    A tree with arrays that span processes (a ``jax.distributed`` run) is saved by calling
    ``save(directory, tree)`` in every process: each writes its own blocks, in place, into
    a sharded checkpoint (the layout of ``max_shard_size=``, default `DEFAULT_SHARD_SIZE`
    5 GB) on a file system they share, and process 0 commits the index once all have
    finished; to an ``s3://`` URL, each process uploads its own bytes and the store
    composes the same shards from them; see the multi-host guide.

    Args:
        path: the file to write, or an fsspec URL (``s3://bucket/model.safetensors``); with
            ``max_shard_size``, a directory (a local path or a URL such as ``s3://bucket/run/step-100``).
        tree: any pytree of arrays, Python scalars and containers.
        metadata: extra ``str -> str`` entries for the header's ``__metadata__``.
        separator: joins path parts into tensor keys (``params.Dense_0.kernel``).
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: the digest algorithm recorded for each tensor: ``"blake3"`` (default,
            the fastest) or ``"sha256"`` (in every standard library); None records none.
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
    plan = SavePlan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    where = os.fspath(path)
    if plan.spans_processes:
        return _save_across_processes(where, plan, max_shard_size)
    if max_shard_size is not None:
        max_bytes = _shards.parse_size(max_shard_size)
        plan.check(where, max_bytes)
        if _remote.is_url(where):
            return _save_sharded_remote(where, plan, max_bytes)
        return _save_sharded(path, plan, max_bytes, progress)
    plan.check(where)
    if _remote.is_url(path):
        return _save_remote(path, plan)  # type: ignore[arg-type]
    try:
        total = sum(a.nbytes for a in plan.arrays)
        with (
            _atomic.atomic_file(path) as out,
            _progress.writing(out, total, f"saving {display_name(path)}", progress) as tracked,
        ):
            return plan.write(tracked)
    except OSError as e:
        raise CkptSchemaError(f"{os.fspath(path)}: cannot write ({e.strerror or e})") from e


@gc_paused
def dumps(
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "blake3",
    max_shard_size: int | str | None = None,
    progress: bool = False,
) -> bytes:
    """The bytes `save` would write for one file, as a `bytes` object.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        metadata: extra ``str -> str`` entries for the header's ``__metadata__``.
        separator: joins path parts into tensor keys (``params.Dense_0.kernel``).
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: the digest algorithm recorded for each tensor: ``"blake3"`` (default,
            the fastest) or ``"sha256"`` (in every standard library); None records none.
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
    plan = SavePlan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    _local_only(plan, "dumps")
    plan.check("<bytes>")
    out = io.BytesIO()
    with _progress.writing(out, sum(a.nbytes for a in plan.arrays), "saving <bytes>", progress) as tracked:
        plan.write(tracked)
    return out.getvalue()


@gc_paused
def manifest_of(
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    separator: str = ".",
    framework: str | None = None,
    checksum: str | None = "blake3",
    max_shard_size: int | str | None = None,
) -> Manifest:
    """The `Manifest` that `save` would record for a tree, checksums included; nothing is written.

    Args:
        tree: any pytree of arrays, Python scalars and containers.
        metadata: the header metadata the save would write (checked, and kept as `Manifest.metadata`).
        separator: joins path parts into tensor keys.
        framework: recorded in the manifest; detected from the tree's types if omitted.
        checksum: the digest algorithm recorded for each tensor: ``"blake3"`` (default,
            the fastest) or ``"sha256"`` (in every standard library); None records none.
        max_shard_size: checked as `save` checks it; a sharded save records the same manifest.

    Returns:
        The `Manifest`, equal to what `save` returns and `read_manifest` reads back.

    Example:
        >>> import numpy as np, ckptschema
        >>> ckptschema.manifest_of({"w": np.zeros(2, np.float32)}).tensors["w"].digest[:12]
        '71e0a9917356'
    """
    plan = SavePlan(tree, metadata=metadata, separator=separator, framework=framework, checksum=checksum)
    _local_only(plan, "manifest_of")
    if max_shard_size is not None:
        _shards.parse_size(max_shard_size)
    plan.check("<manifest_of>")
    plan.set_digests([_digests.digest(a, plan.checksum) if plan.checksum else None for a in plan.arrays])
    return plan.manifest()


def _save_across_processes(where: str, plan: SavePlan, max_shard_size: int | str | None) -> Manifest:
    """Every process saves its own blocks of a tree whose arrays span processes (`_multihost_save`)."""
    max_bytes = _shards.parse_size(max_shard_size if max_shard_size is not None else DEFAULT_SHARD_SIZE)
    plan.check(where, max_bytes)
    if _remote.is_url(where):
        return save_to_bucket(where, plan, max_bytes)
    try:
        return save_across_processes(where, plan, max_bytes)
    except OSError as e:
        raise CkptSchemaError(f"{where}: cannot write ({e.strerror or e})") from e


def _local_only(plan: SavePlan, what: str) -> None:
    if plan.spans_processes:
        raise CkptSchemaError(
            f"{what} needs every tensor's bytes in this process, but the tree has arrays that span processes; "
            f"save it with ckptschema.save(directory, tree) called in every process"
        )


def _save_remote(url: str, plan: SavePlan) -> Manifest:
    """Save to an fsspec URL: hash first, then one sequential write (stores cannot seek back)."""
    try:
        digests = _remote.write(url, plan.header, plan.arrays, plan.checksum)
    except CkptSchemaError:
        raise
    except Exception as e:  # network and permission errors of every store
        raise CkptSchemaError(f"{url}: cannot write ({type(e).__name__}: {e})") from e
    plan.set_digests(digests)
    return plan.manifest()


def _save_sharded_remote(url: str, plan: SavePlan, max_bytes: int) -> Manifest:
    """Upload shards under fresh names, then the index (the commit), then remove the previous save's shards.

    Every object appears whole or not at all (`_remote.upload`), and the index is uploaded
    last: a reader sees the old index with its shards, or the new one with its. Digests are
    computed on other threads while the shards upload. A failed save removes the shards it
    uploaded; one killed midway leaves shards that no index names (harmless, and named so
    that no reader takes them for the checkpoint).
    """
    url = url.rstrip("/")
    groups = _shards.plan_shards([size for *_, size in plan.layout], max_bytes)
    index = f"{url}/{_shards.INDEX_NAME}"
    previous = _shards.own_shards_of(index)
    token = _shards.new_token(_remote.listdir(url))
    names = [_shards.shard_name(number, len(groups), token) for number in range(1, len(groups) + 1)]
    uploaded: list[str] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(_HASH_WORKERS) as pool:
            hashing = [pool.submit(_digests.digest, a, plan.checksum) for a in plan.arrays] if plan.checksum else []
            for name, group in zip(names, groups):
                header = _header.header_bytes(_header.entries_json(plan.layout[i] for i in group), plan.metadata)
                uploaded.append(f"{url}/{name}")
                _remote.upload(uploaded[-1], [header, *(plan.arrays[i] for i in group)])
            digests: list[str | None] = [future.result() for future in hashing] or [None] * len(plan.arrays)
        weight_map = {plan.nodes[i]["key"]: name for name, group in zip(names, groups) for i in group}
        out = io.BytesIO()
        _shards.write_index(out, plan.manifest_text(digests), sum(size for *_, size in plan.layout), weight_map)
        _remote.upload(index, [out.getbuffer()])
    except BaseException:
        for shard in reversed(uploaded):
            with contextlib.suppress(CkptSchemaError):
                _remote.remove(shard)
        raise
    for stale in previous - set(names):
        _remote.remove(f"{url}/{stale}")
    plan.set_digests(digests)
    return plan.manifest()


#: Threads that hash a remote sharded save's tensors while its shards upload.
_HASH_WORKERS = 2


def _save_sharded(directory: PathLike, plan: SavePlan, max_bytes: int, progress: bool) -> Manifest:
    """Write shards under fresh names, then the index (atomically), then drop the old shards.

    What killed saves left in the directory goes first (`_shards.remove_leftovers`); this
    save holds the lock of its first shard until its index is in place, so no other save
    takes its shards for leftovers.
    """
    where = os.fspath(directory)
    if os.path.exists(where) and not os.path.isdir(where):
        raise CkptSchemaError(f"{where}: max_shard_size= saves a directory, but this path is a file")
    index = os.path.join(where, _shards.INDEX_NAME)
    groups = _shards.plan_shards([a.nbytes for a in plan.arrays], max_bytes)
    total = sum(a.nbytes for a in plan.arrays)
    written: list[str] = []
    recorded = list(plan.placeholders)  # each tensor's digest, once its shard is written
    with contextlib.ExitStack() as held:
        try:
            os.makedirs(where, exist_ok=True)
            _shards.remove_leftovers(where)
            previous = _shards.own_shards_of(index)
            token = _shards.new_token(os.listdir(where))
            names = [_shards.shard_name(number, len(groups), token) for number in range(1, len(groups) + 1)]
            with _progress.bar(total, f"saving {display_name(where)}", progress) as advance:
                for name, group in zip(names, groups):
                    header = _header.header_bytes(_header.entries_json(plan.layout[i] for i in group), plan.metadata)
                    written.append(os.path.join(where, name))
                    with _atomic.atomic_file(written[-1], clean=False) as out:  # a new name: no leftovers
                        if len(written) == 1:
                            held.callback(os.close, os.dup(out.fileno()))  # the lock, until the index is in place
                        arrays = [plan.arrays[i] for i in group]
                        digests = _tensors.write_stream(
                            _progress.tracked_file(out, advance), header, arrays, plan.checksum
                        )
                    for i, digest in zip(group, digests):
                        recorded[i] = digest
            weight_map = {plan.nodes[i]["key"]: name for name, group in zip(names, groups) for i in group}
            with _atomic.atomic_file(index) as out:
                _shards.write_index(out, plan.manifest_text(recorded), total, weight_map)
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
    plan.set_digests(recorded)
    return plan.manifest()


# --------------------------------------------------------------------------------- reading
