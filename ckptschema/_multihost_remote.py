"""Saving a tree whose arrays span processes to S3: staging objects per process, shards composed server-side.

`save` called in every process with an ``s3://`` URL writes the objects a single-process
``save(url, tree, max_shard_size=...)`` writes, byte for byte. No two hosts can write one
object, and every part of a multipart upload but the last must hold at least 5 MiB, so:

1. **agree**: the plan of `_multihost_save` (shards, offsets, each distinct block's writer,
   each tensor's hasher), checked equal in every process.
2. **begin**: process 0 finds the previous save's shards and picks a fresh token.
3. **written**: each process uploads its own bytes of each shard (its blocks' runs in file
   order, concatenated; process 0 also the shards' headers) as one staging object
   ``<url>/.staging-<token>/<shard>-<process>`` (`_remote.upload`: aborted on failure), and
   hashes from memory the tensors it writes alone.
4. **hashed**: a tensor written by several processes is hashed by its hasher, streaming its
   bytes in order from memory and from the others' staging objects (ranged, pinned reads),
   a bounded buffer at a time.
5. **composed**: each shard is assembled by one process (balanced by bytes) with one
   multipart upload (`_s3.compose`): a long range of one staging object is copied by the
   store (``UploadPartCopy``), shorter ones are read and sent as data parts, topped up from
   a neighbouring range so that every part but the last holds 5 MiB. A shard under 5 MiB
   is one PUT. An upload that fails is aborted.
6. **committed**: process 0 uploads the index (the commit); then the previous save's shards
   and every staging object are removed. A failed save removes its staging objects and the
   shards it composed; before the index is uploaded the previous index is the checkpoint.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _digests, _fsio, _remote, _s3, _shards, _tensors
from ._distributed import Collective
from ._dtypes import DTYPES
from ._errors import CkptSchemaError
from ._manifest import Manifest
from ._multihost_save import Piece, agree, own_runs
from ._save_plan import SavePlan

__all__ = ["save_to_bucket"]

#: Bytes a hasher streams at a time from memory and the staging objects.
_HASH_CHUNK = 8 << 20
#: The least bytes of a part of a multipart upload that is not the last (S3's own limit).
MIN_PART = 5 << 20
#: The most bytes of a data part (read from the staging objects, then sent).
DATA_PART = 16 << 20
#: The most bytes of a copied part (S3 allows 5 GiB); longer ranges are copied in several parts.
COPY_PART = 4 << 30


def save_to_bucket(url: str, plan: SavePlan, max_bytes: int) -> Manifest:
    """Save `plan` as a sharded checkpoint at the S3 `url`, every process uploading its own bytes.

    Raises:
        CkptSchemaError: in every process, naming the process that failed and why; also for
            a store other than S3 (its objects cannot be composed from parts of others).
    """
    url = url.rstrip("/")
    fs, _ = _fsio.filesystem(url, _fsio.settings().concurrency)
    if not _s3.is_s3(fs):
        raise CkptSchemaError(
            f"{url}: a tree whose arrays span processes is saved to object storage only on S3 (s3://): each "
            f"process uploads its own bytes and the store composes the shards from them (UploadPartCopy), "
            f"which {type(fs).__name__} does not offer; save to an s3:// URL or to a directory on a file system "
            f"every process shares"
        )
    group = Collective(url)
    shard_groups, headers, pieces = agree(url, plan, max_bytes, group)
    save = _BucketSave(url, plan, shard_groups, headers, pieces, group.process, group.count)
    try:
        save.token = group.together("begin", save.begin if group.process == 0 else lambda: "")[0]
        digests: list[str | None] = [None] * len(plan.nodes)
        for step, work in (("written", save.write_own), ("hashed", save.hash_spread)):
            for text in group.together(step, lambda work=work: json.dumps(work())):  # type: ignore[misc]
                for i, digest in json.loads(text).items():
                    digests[int(i)] = digest
        group.together("composed", save.compose_own)
        group.together("committed", (lambda: save.commit(digests)) if group.process == 0 else lambda: "")
    except BaseException:
        save.discard()
        raise
    save.clean()
    plan.set_digests(digests)
    return plan.manifest()


class _Segments:
    """Where the bytes of one shard come from: contiguous ranges, each from one process's staging object."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, owners: np.ndarray, count: int) -> None:
        self.starts, self.ends, self.owners = starts, ends, owners
        lengths = ends - starts
        self.staged = np.zeros_like(starts)  # each range's offset in its staging object
        self.staged_size = [0] * count
        for p in range(count):
            mask = owners == p
            own = lengths[mask]
            self.staged[mask] = np.cumsum(own) - own
            self.staged_size[p] = int(own.sum())
        self.size = int(ends[-1]) if len(ends) else 0

    def runs(self, start: int, buffer: memoryview) -> dict[int, list[tuple[int, memoryview]]]:
        """The reads that fill `buffer` with the shard's bytes from `start`, by process: (staged offset, view)."""
        end = start + len(buffer)
        out: dict[int, list[tuple[int, memoryview]]] = {}
        first = max(int(np.searchsorted(self.ends, start, side="right")), 0)
        last = int(np.searchsorted(self.starts, end, side="left"))
        for s, e, p, at in zip(
            self.starts[first:last].tolist(),
            self.ends[first:last].tolist(),
            self.owners[first:last].tolist(),
            self.staged[first:last].tolist(),
        ):
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                out.setdefault(p, []).append((at + lo - s, buffer[lo - start : hi - start]))
        return out


def _segments(plan: SavePlan, members: range, header: bytes, pieces: list[Piece], count: int) -> _Segments:
    """The ranges of a shard, in file order, merged where one process's bytes follow each other."""
    starts: list[np.ndarray] = [np.zeros(1, np.int64)]
    lengths: list[np.ndarray] = [np.array([len(header)], np.int64)]
    owners: list[np.ndarray] = [np.zeros(1, np.int64)]
    for i in members:
        node, piece = plan.nodes[i], pieces[i]
        itemsize = DTYPES[node["dtype"]].numpy.itemsize
        for block in piece.blocks:
            offsets, run = _tensors.block_runs(node["shape"], itemsize, block.region)
            starts.append(piece.offset + offsets)
            lengths.append(np.full(len(offsets), run, np.int64))
            owners.append(np.full(len(offsets), block.writer, np.int64))
    start, length, owner = np.concatenate(starts), np.concatenate(lengths), np.concatenate(owners)
    keep = length > 0
    start, length, owner = start[keep], length[keep], owner[keep]
    order = np.argsort(start, kind="stable")
    start, length, owner = start[order], length[order], owner[order]
    end = start + length
    breaks = np.ones(len(start), bool)
    breaks[1:] = (owner[1:] != owner[:-1]) | (start[1:] != end[:-1])
    heads = np.flatnonzero(breaks)
    tails = np.append(heads[1:], len(start)) - 1
    return _Segments(start[heads], end[tails], owner[heads], count)


class _Memory:
    """This process's staged bytes of one shard, read from memory (the views it uploaded)."""

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.firsts = np.cumsum([0] + [len(v) for v in views]).tolist()

    def read_runs(self, runs: Sequence[tuple[int, memoryview]]) -> None:
        for offset, buffer in runs:
            i, done = bisect.bisect_right(self.firsts, offset) - 1, 0
            while done < len(buffer):
                at = offset + done - self.firsts[i]
                take = min(len(self.views[i]) - at, len(buffer) - done)
                buffer[done : done + take] = self.views[i][at : at + take]
                done, i = done + take, i + 1


class _BucketSave:
    """One process's part of a save to a bucket, from the staging objects to their removal."""

    def __init__(
        self,
        url: str,
        plan: SavePlan,
        shard_groups: list[range],
        headers: list[bytes],
        pieces: list[Piece],
        process: int,
        count: int,
    ) -> None:
        self.url, self.plan, self.shard_groups, self.headers, self.pieces = url, plan, shard_groups, headers, pieces
        self.process, self.count = process, count
        self.token = ""
        self.previous: set[str] = set()
        self.staged: list[str] = []  # this process's staging objects
        self.composed: list[str] = []  # the shards this process composed
        self.committed = False
        self.segments = [
            _segments(plan, members, header, pieces, count) for members, header in zip(shard_groups, headers)
        ]
        self.names: list[str] = []

    # ----------------------------------------------------------------------- paths

    def staging(self, shard: int, process: int) -> str:
        return f"{self.url}/.staging-{self.token}/{shard + 1}-{process}"

    def shard_url(self, shard: int) -> str:
        return f"{self.url}/{_shards.shard_name(shard + 1, len(self.shard_groups), self.token)}"

    # ----------------------------------------------------------------------- steps

    def begin(self) -> str:
        """Process 0: the previous save's shards, and a token no object of the directory uses."""
        self.previous = _shards.own_shards_of(f"{self.url}/{_shards.INDEX_NAME}")
        self.token = _shards.new_token(_remote.listdir(self.url))
        return self.token

    def own_views(self, shard: int) -> dict[int, list[memoryview]]:
        """This process's bytes of a shard in file order (its staging object's content), by tensor (-1: the header).

        Made again where they are needed: on an accelerator the blocks are copied to host memory
        one shard at a time, not held through every step.
        """
        views: dict[int, list[memoryview]] = {-1: [memoryview(self.headers[shard])]} if self.process == 0 else {}
        for i in self.shard_groups[shard]:
            own = [b for b in self.pieces[i].blocks if b.writer == self.process]
            if own:
                views[i] = [view for _, view in own_runs(self.plan.arrays[i], self.plan.nodes[i], own)]
        return views

    def write_own(self) -> dict[int, str]:
        """Upload this process's staging objects; the digests of the tensors it writes alone."""
        digests: dict[int, str] = {}
        checksum = self.plan.checksum
        for shard in range(len(self.shard_groups)):
            views = self.own_views(shard)
            if self.segments[shard].staged_size[self.process]:
                self.staged.append(self.staging(shard, self.process))
                _remote.upload(self.staged[-1], [view for runs in views.values() for view in runs])
            for i, runs in views.items():
                piece = self.pieces[i] if i >= 0 else None
                if checksum is None or piece is None or piece.hasher != self.process:
                    continue
                if all(b.writer == self.process for b in piece.blocks):
                    hasher = _digests.hasher(checksum, self.plan.layout[i][3])
                    for view in runs:
                        hasher.update(view)
                    digests[i] = hasher.hexdigest()
            del views
        return digests

    def sources(self, shard: int) -> dict[int, Any]:
        """Where each process's staged bytes of a shard are read: memory for this one's, else its object."""
        out: dict[int, Any] = {}
        for p, size in enumerate(self.segments[shard].staged_size):
            if size:
                if p == self.process:
                    out[p] = _Memory([view for runs in self.own_views(shard).values() for view in runs])
                else:
                    out[p] = _remote.RemoteSource(self.staging(shard, p))
        return out

    def read(self, shard: int, sources: dict[int, Any], start: int, buffer: memoryview) -> None:
        """Fill `buffer` with the shard's bytes from `start`."""
        for p, runs in self.segments[shard].runs(start, buffer).items():
            sources[p].read_runs(runs)

    def hash_spread(self) -> dict[int, str]:
        """Hash the tensors this process hashes that several processes wrote, streaming their bytes in order."""
        digests: dict[int, str] = {}
        checksum = self.plan.checksum
        buffer = memoryview(bytearray(_HASH_CHUNK))
        opened: dict[int, dict[int, Any]] = {}
        for i, piece in enumerate(self.pieces):
            if checksum is None or piece.hasher != self.process:
                continue
            if all(b.writer == self.process for b in piece.blocks):
                continue
            if piece.shard not in opened:
                opened[piece.shard] = self.sources(piece.shard)
            sources = opened[piece.shard]
            size = self.plan.layout[i][3]
            hasher = _digests.hasher(checksum, size)
            for start in range(0, size, _HASH_CHUNK):
                view = buffer[: min(_HASH_CHUNK, size - start)]
                self.read(piece.shard, sources, piece.offset + start, view)
                hasher.update(view)
            digests[i] = hasher.hexdigest()
        return digests

    def composers(self) -> list[int]:
        """The process that composes each shard: the largest first, to the one with the fewest bytes so far."""
        load = [0] * self.count
        out = [0] * len(self.segments)
        for shard in sorted(range(len(self.segments)), key=lambda s: -self.segments[s].size):
            out[shard] = min(range(self.count), key=load.__getitem__)
            load[out[shard]] += self.segments[shard].size
        return out

    def compose_own(self) -> str:
        """Assemble the shards this process composes from the staging objects."""
        for shard, composer in enumerate(self.composers()):
            if composer == self.process:
                self.compose(shard)
        return ""

    def compose(self, shard: int) -> None:
        segments, sources = self.segments[shard], self.sources(shard)
        target = self.shard_url(shard)

        def data(start: int, end: int) -> Callable[[], memoryview]:
            def build() -> memoryview:
                buffer = memoryview(bytearray(end - start))
                self.read(shard, sources, start, buffer)
                return buffer

            return build

        self.composed.append(target)
        if segments.size < MIN_PART:
            _remote.upload(target, [data(0, segments.size)()])
            return
        parts: list[Any] = []
        for kind, start, end in plan_parts(segments):
            if kind == "copy":  # within one range
                at = int(np.searchsorted(segments.starts, start, side="right")) - 1
                offset = int(segments.staged[at]) + start - int(segments.starts[at])
                staged = self.staging(shard, int(segments.owners[at]))
                parts.append(("copy", staged, offset, offset + end - start))
            else:
                parts.append(("data", data(start, end)))
        if len(parts) > _s3.MAX_PARTS:
            raise CkptSchemaError(
                f"{target}: this shard would be composed from {len(parts)} parts, more than S3's {_s3.MAX_PARTS} "
                f"(its bytes come from many short ranges of different processes); save with a smaller "
                f"max_shard_size"
            )
        config = _fsio.settings()
        fs, path = _fsio.filesystem(target, config.concurrency)
        try:
            _fsio.run(fs, _s3.compose(fs, path, parts, config.concurrency, config.timeout), config.timeout)
        except CkptSchemaError:
            raise
        except TimeoutError as e:
            raise CkptSchemaError(_fsio.no_answer(target, config.timeout, "cannot compose")) from e
        except Exception as e:  # network and permission errors
            raise CkptSchemaError(f"{target}: cannot compose ({type(e).__name__}: {e})") from e
        finally:
            fs.invalidate_cache(path)

    def commit(self, digests: list[str | None]) -> str:
        """Process 0: upload the index naming the new shards (the commit)."""
        names = [self.shard_url(s).rpartition("/")[2] for s in range(len(self.shard_groups))]
        weight_map = {self.plan.nodes[i]["key"]: n for n, members in zip(names, self.shard_groups) for i in members}
        out = io.BytesIO()
        total = sum(size for *_, size in self.plan.layout)
        _shards.write_index(out, self.plan.manifest_text(digests), total, weight_map)
        _remote.upload(f"{self.url}/{_shards.INDEX_NAME}", [out.getbuffer()])
        self.committed = True
        self.names = names
        return ""

    def clean(self) -> None:
        """After the commit: remove this process's staging objects and (process 0) the previous shards."""
        for staged in self.staged:
            _remote.remove(staged)
        for stale in self.previous - set(self.names):
            _remote.remove(f"{self.url}/{stale}")

    def discard(self) -> None:
        """After a failure: remove this process's staging objects and the shards it composed (best effort)."""
        for url in [*self.staged, *([] if self.committed else self.composed)]:
            with contextlib.suppress(CkptSchemaError):
                _remote.remove(url)


def plan_parts(segments: _Segments) -> list[tuple[str, int, int]]:
    """The parts of a composed shard, in byte order: ``("copy" | "data", start, end)``.

    A range of one staging object is copied by the store when, after lending the bytes the
    data part before it lacks to reach `MIN_PART`, `MIN_PART` bytes or more remain; other
    bytes go in data parts of `MIN_PART` to `DATA_PART` bytes (the last one shorter).
    """
    parts: list[tuple[str, int, int]] = []
    pending: int | None = None  # the start of the data part being gathered; it ends at the current range
    for s, e in zip(segments.starts.tolist(), segments.ends.tolist()):
        d = s - pending if pending is not None else 0
        borrow = MIN_PART - d if 0 < d < MIN_PART else 0
        if e - s - borrow >= MIN_PART:
            if pending is not None and pending < s + borrow:
                parts.append(("data", pending, s + borrow))
            pending = None
            start = s + borrow
            count = -(-(e - start) // COPY_PART)
            cuts = [start + (e - start) * k // count for k in range(count + 1)]
            parts.extend(("copy", a, b) for a, b in itertools.pairwise(cuts))
            continue
        pending = s if pending is None else pending
        while e - pending >= DATA_PART:
            parts.append(("data", pending, pending + DATA_PART))
            pending += DATA_PART
    if pending is not None and pending < segments.size:
        parts.append(("data", pending, segments.size))
    return parts
