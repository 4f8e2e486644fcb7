"""Saving a tree whose arrays span processes: every process writes its own blocks into the final shards.

`save` called in every process of a ``jax.distributed`` run writes the same sharded
checkpoint a single-process ``save(dir, tree, max_shard_size=...)`` writes (plain
safetensors shards and ``model.safetensors.index.json`` holding the manifest), with no
gather: each process writes only bytes it holds, straight into the final shard files, in
place (``pwrite``), so the directory must be on a file system every process shares.

The steps (each one a `_distributed.Collective` step, entered by every process):

1. **agree**: every process plans the same layout from its own tree (shards, offsets,
   and for each distinct block of each tensor the one process that writes it); the plans'
   fingerprints must be equal, else every process raises before a byte is written.
2. **begin**: process 0 removes what killed saves left, creates the new shards under a
   fresh token at their final size with their headers, and holds the lock of the first
   until the index is in place (`_shards.remove_leftovers` then leaves them alone).
3. **written**: every process writes its blocks and fsyncs them. A block held by several
   processes (replicated) is written once, by the first process holding it; a leaf every
   process holds whole (numpy, or a fully addressable array) by one process, chosen to
   balance the bytes. Each tensor written by one process alone is hashed by it from
   memory as it is written.
4. **hashed**: a tensor whose blocks come from several processes is hashed by one of
   them (balanced by bytes), reading it back from the shard in bounded chunks: digests
   are computed by every process in parallel, never by one host reading everything.
5. **committed**: process 0 writes the index with every digest, atomically, then removes
   the shards of the previous save. Before that instant the old index and its shards are
   the checkpoint; a crash of any process at any instant leaves it loadable.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _atomic, _digests, _header, _shards, _tensors
from ._distributed import Collective, spans_processes
from ._dtypes import DTYPES
from ._errors import CkptSchemaError
from ._manifest import Manifest
from ._save_plan import SavePlan
from ._sources import IOV_MAX, FileSource

__all__ = ["DEFAULT_SHARD_SIZE", "Block", "Piece", "agree", "block_data", "own_runs", "save_across_processes"]

#: The shard size of a save across processes when none is given (that of the Hugging Face tools).
DEFAULT_SHARD_SIZE = 5 * 10**9

#: Bytes a process reads at a time when it hashes a tensor back from its shard.
_HASH_CHUNK = 4 << 20

Index = tuple[slice, ...]


class Block(NamedTuple):
    """One distinct block of a tensor and the process that writes it."""

    region: Index
    writer: int


class Piece(NamedTuple):
    """Where one tensor goes, who writes its blocks, and who hashes it."""

    shard: int
    offset: int  # of its first byte in the shard file
    blocks: list[Block]
    hasher: int


def save_across_processes(directory: str, plan: SavePlan, max_bytes: int | None) -> Manifest:
    """Save `plan` as a sharded checkpoint in `directory`, every process writing its own blocks.

    Called by `ckptschema.save` in every process when the tree has arrays that span
    processes; the result is what a single-process sharded save of the same tree writes.

    Raises:
        CkptSchemaError: in every process, naming the process that failed and why.
    """
    group = Collective(directory)
    shard_groups, headers, pieces = agree(directory, plan, max_bytes, group)
    created = _Created(directory, plan, shard_groups, headers)
    try:
        token = group.together("begin", created.create if group.process == 0 else lambda: "")[0]
        paths = [os.path.join(directory, name) for name in _shard_names(token, len(shard_groups))]
        digests: list[str | None] = [None] * len(plan.nodes)
        for step, work in (("written", _write_own), ("hashed", _hash_back)):
            for text in group.together(step, functools.partial(_published, work, plan, pieces, paths, group.process)):
                for i, digest in json.loads(text).items():
                    digests[int(i)] = digest
        group.together("committed", (lambda: created.commit(digests)) if group.process == 0 else lambda: "")
    except BaseException:
        created.discard()
        raise
    plan.set_digests(digests)
    return plan.manifest()


def agree(
    directory: str, plan: SavePlan, max_bytes: int | None, group: Collective
) -> tuple[list[range], list[bytes], list[Piece]]:
    """The "agree" step: every process plans the same shards, headers and pieces, or every process raises.

    Shared by the saves to a shared file system and to a bucket (`_multihost_remote`).
    """
    if directory.endswith(".safetensors"):
        raise CkptSchemaError(
            f"{directory}: a tree whose arrays span processes is saved as a sharded checkpoint directory "
            f"(the Hugging Face layout); give a directory path, not a .safetensors file"
        )
    shard_groups = _shards.plan_shards([size for *_, size in plan.layout], max_bytes or DEFAULT_SHARD_SIZE)
    headers = [
        _header.header_bytes(_header.entries_json(plan.layout[i] for i in members), plan.metadata)
        for members in shard_groups
    ]
    pieces = _pieces(plan, shard_groups, headers, group.count)
    mine = _fingerprint(directory, plan, shard_groups, pieces)
    theirs = group.together("agree", lambda: mine)
    if any(other != mine for other in theirs):
        raise CkptSchemaError(
            f"{directory}: the processes do not save the same checkpoint (process "
            f"{next(p for p, other in enumerate(theirs) if other != mine)} has another path, tree structure, "
            f"shapes, dtypes, shardings or options than process {group.process}); call save with the same "
            f"arguments in every process"
        )
    return shard_groups, headers, pieces


def _published(work: Any, *args: Any) -> str:
    """The digests a step's `work` computed, as JSON for the other processes."""
    return json.dumps(work(*args))


def _shard_names(token: str, count: int) -> list[str]:
    return [_shards.shard_name(number, count, token) for number in range(1, count + 1)]


def _pieces(plan: SavePlan, shard_groups: list[range], headers: list[bytes], processes: int) -> list[Piece]:
    """Every tensor's shard, offset, block writers and hasher, the same in every process.

    Blocks held by several processes are written by the first in the sharding's device
    order; leaves every process holds whole, and the hashing of tensors that several
    processes write, go to the process with the fewest bytes so far.
    """
    load = [0] * processes
    pieces: list[Piece | None] = [None] * len(plan.nodes)
    whole: list[int] = []
    spread: list[int] = []
    for number, members in enumerate(shard_groups):
        offset = len(headers[number])
        for i in members:
            leaf = plan.arrays[i]
            blocks = _blocks(leaf) if spans_processes(leaf) else []
            for block in blocks:
                load[block.writer] += _nbytes(block.region, leaf.shape, leaf.dtype.itemsize)
            pieces[i] = Piece(number, offset, blocks, -1)
            (spread if blocks else whole).append(i)
            offset += plan.layout[i][3]
    for i in sorted(whole, key=lambda i: -plan.layout[i][3]):
        writer = min(range(processes), key=load.__getitem__)
        load[writer] += plan.layout[i][3]
        pieces[i] = pieces[i]._replace(blocks=[Block((), writer)], hasher=writer)  # type: ignore[union-attr]
    for i in spread:
        piece = pieces[i]
        assert piece is not None
        writers = {block.writer for block in piece.blocks}
        if len(writers) == 1:
            hasher = writers.pop()  # from memory, as it writes
        else:
            hasher = min(range(processes), key=load.__getitem__)  # reads the tensor back
            load[hasher] += plan.layout[i][3]
        pieces[i] = piece._replace(hasher=hasher)
    return pieces  # type: ignore[return-value]


def _blocks(array: Any) -> list[Block]:
    """The distinct blocks of an array that spans processes, each with the first process holding it."""
    found: dict[tuple[tuple[int, int], ...], Block] = {}
    for device, index in array.sharding.devices_indices_map(array.shape).items():
        found.setdefault(_tensors.block_bounds(index, array.shape), Block(index, device.process_index))
    return list(found.values())


def _nbytes(index: Index, shape: Sequence[int], itemsize: int) -> int:
    return itemsize * math.prod(stop - start for start, stop in _tensors.block_bounds(index, shape))


def _write_own(plan: SavePlan, pieces: list[Piece], paths: list[str], process: int) -> dict[int, str]:
    """Write this process's blocks in place; return the digests of the tensors it alone writes."""
    digests: dict[int, str] = {}
    descriptors: dict[int, int] = {}
    try:
        for i, piece in enumerate(pieces):
            own = [block for block in piece.blocks if block.writer == process]
            if not own:
                continue
            fd = descriptors.get(piece.shard)
            if fd is None:
                fd = descriptors[piece.shard] = _open_shard(paths[piece.shard])
            hashes = piece.hasher == process and len(own) == len(piece.blocks) and plan.checksum is not None
            hasher = _digests.hasher(plan.checksum, plan.layout[i][3]) if hashes else None  # type: ignore[arg-type]
            _write_blocks(fd, piece.offset, plan.arrays[i], plan.nodes[i], own, hasher)
            if hasher is not None:
                digests[i] = hasher.hexdigest()
        for fd in descriptors.values():
            os.fsync(fd)
    finally:
        for fd in descriptors.values():
            os.close(fd)
    return digests


#: Runs handled per batch when blocks are written (bounds the bookkeeping of many small runs).
_RUN_BATCH = 1 << 12


def _write_blocks(
    fd: int, base: int, leaf: Any, node: dict[str, Any], blocks: list[Block], hasher: _digests.Hasher | None
) -> None:
    """Write `blocks` of a tensor whose first byte is at `base`, run by run in file order (hashing them, if asked).

    With a `hasher`, the blocks are all of the tensor's: written in file order, their runs
    are its bytes in order.
    """
    touching: list[memoryview] = []  # runs that follow each other in the file: one pwritev
    start = end = 0
    for at, view in own_runs(leaf, node, blocks):
        if hasher is not None:
            hasher.update(view)
        if touching and (base + at != end or len(touching) == IOV_MAX):
            _pwrite_all(fd, touching, start, end - start)
            touching = []
        if not touching:
            start = end = base + at
        touching.append(view)
        end += len(view)
    if touching:
        _pwrite_all(fd, touching, start, end - start)


def own_runs(leaf: Any, node: dict[str, Any], blocks: list[Block]) -> Iterator[tuple[int, memoryview]]:
    """The runs of `blocks` of a tensor, in file order: (offset from the tensor's first byte, this process's bytes)."""
    dtype = DTYPES[node["dtype"]]
    octets: list[memoryview] = []
    offsets: list[np.ndarray] = []
    lengths: list[int] = []
    for block in blocks:
        data = _tensors.to_numpy(block_data(leaf, block.region), dtype, node["key"])
        octets.append(data.reshape(-1).view(np.uint8).data)
        block_offsets, length = _tensors.block_runs(node["shape"], dtype.numpy.itemsize, block.region)
        offsets.append(block_offsets)
        lengths.append(length)
    if not offsets:
        return
    firsts = np.cumsum([0] + [len(o) for o in offsets])  # run r is run r - firsts[b] of block b
    offset = np.concatenate(offsets)
    del offsets
    order = np.argsort(offset, kind="stable")
    for batch in range(0, len(order), _RUN_BATCH):
        runs = order[batch : batch + _RUN_BATCH]
        owners = np.searchsorted(firsts, runs, side="right") - 1
        for run, number, at in zip(runs.tolist(), owners.tolist(), offset[runs].tolist()):
            size = lengths[number]
            first = (run - int(firsts[number])) * size
            yield at, octets[number][first : first + size]


def _hash_back(plan: SavePlan, pieces: list[Piece], paths: list[str], process: int) -> dict[int, str]:
    """Hash the tensors this process hashes but did not write alone, reading them back from their shards."""
    digests: dict[int, str] = {}
    if plan.checksum is None:
        return digests
    buffer: memoryview | None = None
    for i, piece in enumerate(pieces):
        if piece.hasher != process or all(block.writer == process for block in piece.blocks):
            continue
        buffer = buffer or memoryview(bytearray(_HASH_CHUNK))
        size = plan.layout[i][3]
        hasher = _digests.hasher(plan.checksum, size)
        source = FileSource(paths[piece.shard], follow_symlinks=False)
        try:
            for start in range(0, size, _HASH_CHUNK):
                view = buffer[: min(_HASH_CHUNK, size - start)]
                source.read_into(piece.offset + start, view)
                hasher.update(view)
        finally:
            source.close()
        digests[i] = hasher.hexdigest()
    return digests


def block_data(leaf: Any, index: Index) -> Any:
    """The data of block `index` of a leaf, from this process's own copy of it."""
    if index == ():
        return leaf
    wanted = _tensors.block_bounds(index, leaf.shape)
    for shard in leaf.addressable_shards:
        if _tensors.block_bounds(shard.index, leaf.shape) == wanted:
            return shard.data
    raise AssertionError(f"no addressable shard holds block {wanted}")  # pragma: no cover - planned from the sharding


def _open_shard(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as e:
        raise CkptSchemaError(
            f"{path}: process 0 created this shard, but this process cannot see it: a save across processes "
            f"writes in place, so the directory must be on a file system every process shares"
        ) from e


def _pwrite_all(fd: int, views: list[memoryview], offset: int, nbytes: int | None = None) -> None:
    """Write `views` (at most `IOV_MAX`, `nbytes` in all if given) one after another from `offset`.

    One ``pwritev``, resumed where a short write stopped.
    """
    written = os.pwritev(fd, views, offset)
    if written == nbytes:
        return
    views, first = list(views), 0
    while True:
        offset += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if first == len(views):
            return
        views[first] = views[first][written:]
        written = os.pwritev(fd, views[first:], offset)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fingerprint(directory: str, plan: SavePlan, shard_groups: list[range], pieces: list[Piece]) -> str:
    """What every process must agree on, hashed: the path, the files and every block's writer."""
    described = [
        directory if "://" in directory else os.path.abspath(directory),
        plan.manifest_text(plan.placeholders),
        plan.metadata,
        [list(members) for members in shard_groups],
        [
            (p.shard, p.offset, p.hasher, [(_tensors.block_bounds(b.region, n["shape"]), b.writer) for b in p.blocks])
            for p, n in zip(pieces, plan.nodes)
        ],
    ]
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class _Created:
    """Process 0's part: the new shards from their creation to the commit (or their removal)."""

    def __init__(self, directory: str, plan: SavePlan, shard_groups: list[range], headers: list[bytes]) -> None:
        self.directory, self.plan, self.shard_groups, self.headers = directory, plan, shard_groups, headers
        self.paths: list[str] = []
        self.lock: int | None = None
        self.previous: set[str] = set()
        self.committed = False

    def create(self) -> str:
        """Create the shards at their final size, headers written; return their token."""
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CkptSchemaError(f"{self.directory}: a sharded checkpoint is a directory, but this path is a file")
        os.makedirs(self.directory, exist_ok=True)
        _shards.remove_leftovers(self.directory)
        self.previous = _shards.own_shards_of(os.path.join(self.directory, _shards.INDEX_NAME))
        token = _shards.new_token(os.listdir(self.directory))
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for name, members, header in zip(_shard_names(token, len(self.shard_groups)), self.shard_groups, self.headers):
            self.paths.append(os.path.join(self.directory, name))
            fd = os.open(self.paths[-1], flags, 0o666)
            try:
                if self.lock is None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the index is in place
                os.ftruncate(fd, len(header) + sum(self.plan.layout[i][3] for i in members))
                _pwrite_all(fd, [memoryview(header)], 0)
                os.fsync(fd)
            finally:
                if self.lock is None:
                    self.lock = fd
                else:
                    os.close(fd)
        return token

    def commit(self, digests: list[str | None]) -> str:
        """Write the index naming the new shards (the commit), then remove the previous save's shards."""
        names = [os.path.basename(path) for path in self.paths]
        weight_map = {
            self.plan.nodes[i]["key"]: name for name, members in zip(names, self.shard_groups) for i in members
        }
        total = sum(size for *_, size in self.plan.layout)
        _atomic.fsync_directory(self.directory)  # the shards' names, before the index names them
        with _atomic.atomic_file(os.path.join(self.directory, _shards.INDEX_NAME)) as out:
            _shards.write_index(out, self.plan.manifest_text(digests), total, weight_map)
        self.committed = True
        self._unlock()
        for stale in self.previous - set(names):
            _remove(os.path.join(self.directory, stale))
        return ""

    def discard(self) -> None:
        """After a failed save: remove the new shards (the previous checkpoint never changed)."""
        self._unlock()
        if not self.committed:
            for path in reversed(self.paths):
                _remove(path)

    def _unlock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
