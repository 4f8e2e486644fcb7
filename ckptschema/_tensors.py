"""Tensor bytes: read into aligned arrays (coalesced, in blocks, mapped) and written with their digests.

Tensor bytes are read with positioned reads into fresh, 64-byte aligned buffers, as one batch
of runs per load (`Source.read_runs`: vectored, and on several threads when large); a block of
a tensor (`read_blocks`) is read as its runs of contiguous elements, never as a span covering
it. Writing streams each tensor from its own buffer, hashing on other threads while the main
thread writes; `_atomic.atomic_file` makes the file appear whole or not at all.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO, NoReturn

import numpy as np

from ._digests import digest
from ._dtypes import DType
from ._errors import CkptSchemaError, FormatError, IntegrityError
from ._format import PLACEHOLDER_DIGEST, as_bytes
from ._header import Entry
from ._sources import Source

__all__ = ["aligned_empty", "read_blocks", "read_tensor", "read_tensors", "to_numpy", "verify", "write_file"]

_ALIGN = 64
_HASH_IN_THREAD = 64 << 10  # tensors this large are hashed on other cores while writing
_HASH_WORKERS = 2  # hashing a core is slower than writing (sha256 most): two keep up


def aligned_empty(nbytes: int) -> np.ndarray:
    """A fresh uint8 buffer whose data starts on a 64-byte boundary (JAX can alias it)."""
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    skip = -raw.__array_interface__["data"][0] % _ALIGN
    return raw[skip : skip + nbytes]


def read_tensor(source: Source, entry: Entry, dtype: DType, shape: Sequence[int]) -> np.ndarray:
    """Read one tensor's bytes into a fresh aligned numpy array of its true dtype and shape."""
    buffer = aligned_empty(entry.nbytes)
    if entry.nbytes:
        source.read_into(entry.start, buffer.data)
    check_bits(source, entry, dtype, buffer)
    return buffer.view(dtype.numpy).reshape(tuple(shape))


#: Tensors smaller than this are read together with their neighbours, in one call.
_SMALL_TENSOR = 1 << 20
#: Most bytes one coalesced read covers.
_MAX_RUN = 16 << 20


def read_tensors(source: Source, wanted: Iterable[tuple[Entry, DType, Sequence[int]]]) -> list[np.ndarray]:
    """Read many tensors, in the order asked, each as an array of its true dtype and shape.

    Large tensors get their own 64-byte aligned buffer, which JAX can alias. Runs of small
    tensors that lie next to each other in the file are read with one call into one buffer
    and handed out as views of it, so 20,000 tiny leaves cost a few reads, not 20,000. All
    the buffers are filled by one `Source.read_runs` call.
    """
    wanted = list(wanted)
    arrays: list[Any] = [None] * len(wanted)
    reads: list[tuple[int, memoryview]] = []
    run: list[int] = []

    def into(start: int, end: int) -> np.ndarray:
        buffer = aligned_empty(end - start)
        if end > start:
            reads.append((start, buffer.data))
        return buffer

    def flush() -> None:
        start, end = wanted[run[0]][0].start, wanted[run[-1]][0].end
        buffer = into(start, end)
        for i in run:
            entry, dtype, shape = wanted[i]
            chunk = buffer[entry.start - start : entry.end - start]
            arrays[i] = chunk.view(dtype.numpy).reshape(tuple(shape))
        run.clear()

    for i in sorted(range(len(wanted)), key=lambda i: wanted[i][0].start):
        entry, dtype, shape = wanted[i]
        if entry.nbytes >= _SMALL_TENSOR:
            arrays[i] = into(entry.start, entry.end).view(dtype.numpy).reshape(tuple(shape))
            continue
        if run and (wanted[run[-1]][0].end != entry.start or entry.end - wanted[run[0]][0].start > _MAX_RUN):
            flush()
        run.append(i)
    if run:
        flush()
    source.read_runs(reads)
    for (entry, dtype, _), array in zip(wanted, arrays):
        check_bits(source, entry, dtype, array)
    return arrays


def read_blocks(
    source: Source, entry: Entry, dtype: DType, shape: Sequence[int], indices: Sequence[tuple[slice, ...]]
) -> list[np.ndarray]:
    """The blocks ``array[index]`` of a stored C-order tensor, one for each index, reading only their bytes.

    A block is a set of runs of contiguous elements (one run when only the first axis is
    cut, one per row when the last axis is); each run is read straight into its place in
    the block's fresh 64-byte aligned array. The runs of all the blocks go to one
    `Source.read_runs` call, sorted by offset, so runs of different blocks that touch in the
    file (row ``r`` of a column block ends where row ``r`` of the next begins) share one
    vectored read. Nothing outside the blocks is read. Equal indices (replicas) give the same
    array, read once. An index may be shorter than the shape; its slices must have step 1.

    Raises:
        FormatError: if the file ends early, or a block of a dtype narrower than a byte has bits
            set above its width (naming the file byte).

    Example:
        >>> import ckptschema, numpy as np
        >>> from ckptschema import _header, _sources
        >>> from ckptschema._dtypes import DTYPES
        >>> source = _sources.BytesSource(ckptschema.dumps({"w": np.arange(12, dtype=np.int32).reshape(3, 4)}))
        >>> entry = _header.read_header(source).entries["w"]
        >>> [b.tolist() for b in read_blocks(source, entry, DTYPES["int32"], (3, 4), [(slice(0, 2), slice(1, 3))])]
        [[[1, 2], [5, 6]]]
    """
    shape = tuple(shape)
    itemsize = dtype.numpy.itemsize
    blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
    runs: list[tuple[np.ndarray, int, memoryview]] = []  # of each block read: its runs' offsets and size
    for index in indices:
        bounds = block_bounds(index, shape)
        if bounds not in blocks:
            blocks[bounds] = out = aligned_empty(math.prod(stop - start for start, stop in bounds) * itemsize)
            if out.nbytes:
                offsets, size = block_runs(shape, itemsize, index)
                runs.append((offsets + entry.start, size, out.data))
    for batch in _batches(runs):
        source.read_runs(batch)
    arrays = []
    for index in indices:
        bounds = block_bounds(index, shape)
        out, sub = blocks[bounds], tuple(stop - start for start, stop in bounds)
        if dtype.bits is not None and (out >> dtype.bits).any():
            bad = np.unravel_index(int(np.argmax(out >> dtype.bits)), sub)
            flat = int(np.ravel_multi_index(tuple(i + start for i, (start, _) in zip(bad, bounds)), shape))
            _refuse_bits(source, entry, dtype, flat)
        arrays.append(out.view(dtype.numpy).reshape(sub))
    return arrays


def _batches(blocks: list[tuple[np.ndarray, int, memoryview]]) -> list[list[tuple[int, memoryview]]]:
    """The runs of `blocks` (each: its runs' offsets, the size of each, its buffer) as `Source.read_runs`
    batches: one, sorted by offset, unless blocks overlap (then one per block)."""
    if not blocks:
        return []
    start = np.concatenate([offsets for offsets, _, _ in blocks])
    owner = np.repeat(np.arange(len(blocks)), [len(offsets) for offsets, _, _ in blocks])
    size = np.asarray([n for _, n, _ in blocks], np.int64)[owner]
    within = np.concatenate([np.arange(len(offsets), dtype=np.int64) * n for offsets, n, _ in blocks])
    order = np.argsort(start, kind="stable")
    if np.all(start[order][1:] >= (start + size)[order][:-1]):
        batches = [order]
    else:  # blocks that overlap without being equal (never those of a sharding)
        batches = np.split(np.arange(len(start)), np.cumsum([len(offsets) for offsets, _, _ in blocks])[:-1])
    buffers = [buffer for _, _, buffer in blocks]
    return [
        [(o, buffers[b][w : w + n]) for o, b, w, n in zip(*(a[batch].tolist() for a in (start, owner, within, size)))]
        for batch in batches
    ]


def block_bounds(index: tuple[slice, ...], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of `index` on each axis of `shape` (a missing slice is the whole axis).

    Example:
        >>> block_bounds((slice(2, None),), (6, 4))
        ((2, 6), (0, 4))
    """
    bounds = []
    for axis, n in enumerate(shape):
        start, stop, step = (index[axis] if axis < len(index) else slice(None)).indices(n)
        if step != 1:
            raise ValueError(f"block index {index!r} has a step; only blocks of step 1 are read")
        bounds.append((start, max(start, stop)))
    return tuple(bounds)


def block_runs(shape: Sequence[int], itemsize: int, index: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    """The runs of contiguous bytes that block ``array[index]`` of a C-order array occupies.

    Returns the byte offset of each run from the array's first byte, in the block's own C
    order, and the length that every run has. The runs end at the last axis the block
    cuts: it and every axis after it lie inside one run. An empty block has no runs.

    Example:
        >>> offsets, length = block_runs((4, 6), 4, (slice(1, 3), slice(2, 4)))
        >>> offsets.tolist(), length
        ([32, 56], 8)
    """
    shape = tuple(shape)
    bounds = block_bounds(index, shape)
    nbytes = itemsize * math.prod(stop - start for start, stop in bounds)
    if nbytes == 0:
        return np.zeros(0, np.int64), 0
    strides = [itemsize * math.prod(shape[i + 1 :]) for i in range(len(shape))]
    cut = max((i for i, (b, n) in enumerate(zip(bounds, shape)) if b != (0, n)), default=0)
    offsets = np.array(sum(start * stride for (start, _), stride in zip(bounds[cut:], strides[cut:])), np.int64)
    for (start, stop), stride in zip(bounds[:cut], strides[:cut]):
        offsets = offsets[..., None] + np.arange(start, stop, dtype=np.int64) * stride
    offsets = offsets.reshape(-1)
    return offsets, nbytes // len(offsets)


def map_tensors(source: Source, buffer: Any, wanted: Iterable[tuple[Entry, DType, Sequence[int]]]) -> list[np.ndarray]:
    """Read-only arrays that are views of a checkpoint's bytes (`Source.map`, a memory map of a file).

    Nothing is read until an array is used, except the bytes of dtypes narrower than a byte,
    which are checked (`check_bits`). The file must not be truncated or rewritten in
    place while the arrays live: the kernel would kill the process with SIGBUS when it
    touches a page that is gone. (Replacing the file by rename, as `save` does, is safe:
    the map keeps the old file.)
    """
    arrays = []
    for entry, dtype, shape in wanted:
        raw = np.frombuffer(buffer, np.uint8, count=entry.nbytes, offset=entry.start)
        check_bits(source, entry, dtype, raw)
        arrays.append(raw.view(dtype.numpy).reshape(tuple(shape)))
    return arrays


def check_bits(source: Source, entry: Entry, dtype: DType, array: np.ndarray) -> None:
    """Refuse the bytes of a dtype narrower than a byte that have bits set above its width.

    ml_dtypes keeps such a value in the low bits of a byte; what the bits above would mean
    differs by dtype (masked by some, read as another value by others), so one rule holds
    for every dtype and path: they must be zero.
    """
    if dtype.bits is not None:
        high = array.reshape(-1).view(np.uint8) >> dtype.bits
        if high.any():
            _refuse_bits(source, entry, dtype, int(np.argmax(high)))


def _refuse_bits(source: Source, entry: Entry, dtype: DType, index: int) -> NoReturn:
    """Raise for the element `index` of `entry`, naming the file and file byte it is at."""
    offset = entry.start + index
    locate = getattr(source, "locate", None)
    name, offset = locate(offset) if locate is not None else (source.name, offset)
    bits = dtype.bits
    raise FormatError(
        f"{name}: tensor {entry.key!r} ({dtype.name}) has bits set above its {bits} value bits at file byte "
        f"{offset}; a {dtype.name} value fills the low {bits} bits of its byte and the rest must be zero "
        f"(the file is corrupt)"
    )


def to_numpy(value: Any, dtype: DType, key: str) -> np.ndarray:
    """A little-endian, C-contiguous numpy view (or copy, when needed) of the array leaf `key`.

    Raises:
        CkptSchemaError: for an array of a dtype narrower than a byte whose bytes have bits
            set above its width (``.view`` of other bytes makes such arrays); a load would
            refuse them.
    """
    array = np.asarray(value)
    if array.dtype != dtype.numpy:
        array = array.astype(dtype.numpy)
    array = np.ascontiguousarray(array)
    if dtype.bits is not None:
        high = array.reshape(-1).view(np.uint8) >> dtype.bits
        if high.any():
            index = int(np.argmax(high))
            mask = (1 << dtype.bits) - 1
            raise CkptSchemaError(
                f"tensor {key!r} ({dtype.name}) has bits set above its {dtype.bits} value bits in byte {index}; "
                f"a {dtype.name} value must fill only the low {dtype.bits} bits of its byte: clear the rest with "
                f"`(x.view(np.uint8) & {mask:#x}).view(x.dtype)` or build the array from values"
            )
    return array


def write_stream(out: BinaryIO, header: bytes, arrays: list[np.ndarray], checksum: str | None) -> list[str | None]:
    """Write a header then each array's bytes; return their digests by the `checksum` algorithm (or Nones).

    Arrays are hashed on worker threads while the main thread writes (all release
    the GIL), so a checksummed save costs about one pass over the data.
    """
    out.write(header)
    digests: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=_HASH_WORKERS) as pool:
        for array in arrays:
            data = as_bytes(array)
            if checksum is None:
                digests.append(None)
            elif len(data) >= _HASH_IN_THREAD:
                digests.append(pool.submit(digest, data, checksum))
            else:
                digests.append(digest(data, checksum))
            out.write(data)
        return [d.result() if isinstance(d, concurrent.futures.Future) else d for d in digests]


def write_file(out: BinaryIO, header_for: Any, arrays: list[np.ndarray], checksum: str | None) -> list[str | None]:
    """Stream a checkpoint into a seekable file whose header depends on the digests.

    `header_for(digests)` builds the header bytes; it is called first with placeholder
    digests (all the same length as real ones, so the header length is final), and again
    with the real digests once the data is written, which are then written in place.
    """
    placeholder = [(PLACEHOLDER_DIGEST if checksum else None) for _ in arrays]
    start = out.tell()
    first = header_for(placeholder)
    digests = write_stream(out, first, arrays, checksum)
    if checksum:
        final = header_for(digests)
        if len(final) != len(first):  # pragma: no cover - digests are fixed-length hex
            raise AssertionError("header length changed with digests")
        end = out.tell()
        out.seek(start)
        out.write(final)
        out.seek(end)
    return digests


def verify(array: np.ndarray, expected: str | None, checksum: str, key: str, where: str) -> None:
    """Raise `IntegrityError` if an array's bytes do not have the expected digest by the `checksum` algorithm."""
    if expected is not None and digest(array, checksum) != expected:
        raise IntegrityError(f"{where}: tensor {key!r} fails its {checksum} checksum; the file is corrupt")
