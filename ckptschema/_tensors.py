"""Tensor bytes: read into aligned arrays (coalesced, threaded, sliced, mapped) and written with their digests.

Tensor bytes are read with positioned reads into fresh, 64-byte aligned buffers (a large
load on several threads). Writing streams each tensor from its own buffer, hashing on other
threads while the main thread writes; `_atomic.atomic_file` makes the file appear whole or
not at all.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO, NoReturn

import numpy as np

from ._digests import digest
from ._dtypes import DType
from ._errors import CkptSchemaError, FormatError, IntegrityError
from ._format import PLACEHOLDER_DIGEST, as_bytes
from ._header import Entry
from ._sources import Source

__all__ = ["aligned_empty", "read_slice", "read_tensor", "read_tensors", "to_numpy", "verify", "write_file"]

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
#: Loads of at least this many bytes are read by `_READ_WORKERS` threads, `_READ_CHUNK` at a time.
_PARALLEL_READ = 32 << 20
_READ_CHUNK = 8 << 20
_READ_WORKERS = min(4, os.cpu_count() or 1)


def read_tensors(source: Source, wanted: Iterable[tuple[Entry, DType, Sequence[int]]]) -> list[np.ndarray]:
    """Read many tensors, in the order asked, each as an array of its true dtype and shape.

    Large tensors get their own 64-byte aligned buffer, which JAX can alias. Runs of small
    tensors that lie next to each other in the file are read with one call into one buffer
    and handed out as views of it, so 20,000 tiny leaves cost a few reads, not 20,000.
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
    _read_all(source, reads)
    for (entry, dtype, _), array in zip(wanted, arrays):
        check_bits(source, entry, dtype, array)
    return arrays


def _read_all(source: Source, reads: list[tuple[int, memoryview]]) -> None:
    """Fill each buffer from its offset; a large load on several threads.

    Most of the time of reading a warm file into fresh buffers goes to the kernel copying
    and faulting in the destination pages; ``preadv`` releases the GIL, so threads that
    read different chunks do that on every core.
    """
    if _READ_WORKERS < 2 or sum(len(buffer) for _, buffer in reads) < _PARALLEL_READ:
        for offset, buffer in reads:
            source.read_into(offset, buffer)
        return
    step = _READ_CHUNK
    chunks = [(offset + i, buffer[i : i + step]) for offset, buffer in reads for i in range(0, len(buffer), step)]
    with concurrent.futures.ThreadPoolExecutor(_READ_WORKERS) as pool:
        for _ in pool.map(lambda chunk: source.read_into(*chunk), chunks):
            pass


#: A slice read as more separate runs than this is read as the one span covering them.
_MAX_RUNS = 256


def read_slice(
    source: Source, entry: Entry, dtype: DType, shape: Sequence[int], index: tuple[slice, ...]
) -> np.ndarray:
    """The block ``array[index]`` of a stored C-order tensor, reading only its bytes.

    A block is a set of runs of contiguous elements (one run when only the first axis is
    cut); each run is read straight into its place in a fresh aligned array. A block of
    more than `_MAX_RUNS` runs is read as the span from its first to its last element,
    which costs fewer calls, then copied out.
    """
    shape = tuple(shape)
    bounds = [s.indices(n)[:2] for s, n in zip(index, shape)] + [(0, n) for n in shape[len(index) :]]
    sub = tuple(max(stop - start, 0) for start, stop in bounds)
    itemsize = dtype.numpy.itemsize
    strides = [itemsize * math.prod(shape[i + 1 :]) for i in range(len(shape))]
    out = aligned_empty(math.prod(sub) * itemsize)
    if out.nbytes:
        cut = max((i for i, (b, n) in enumerate(zip(bounds, shape)) if b != (0, n)), default=-1)
        outer = [range(start, stop) for start, stop in bounds[: max(cut, 0)]]
        first = sum(start * stride for (start, _), stride in zip(bounds, strides))
        run = out.nbytes // max(math.prod(len(r) for r in outer), 1)
        if math.prod(len(r) for r in outer) <= _MAX_RUNS:
            for n, position in enumerate(itertools.product(*outer)):
                offset = sum((i - start) * stride for i, (start, _), stride in zip(position, bounds, strides))
                source.read_into(entry.start + first + offset, out[n * run : (n + 1) * run].data)
        else:
            last = sum((stop - 1) * stride for (_, stop), stride in zip(bounds, strides)) + itemsize
            span = aligned_empty(last - first)
            source.read_into(entry.start + first, span.data)
            block = np.lib.stride_tricks.as_strided(span.view(dtype.numpy), sub, strides)
            out.view(dtype.numpy).reshape(sub)[...] = block
    if dtype.bits is not None and (out >> dtype.bits).any():
        bad = np.unravel_index(int(np.argmax(out >> dtype.bits)), sub)
        flat = int(np.ravel_multi_index(tuple(i + start for i, (start, _) in zip(bad, bounds)), shape))
        _refuse_bits(source, entry, dtype, flat)
    return out.view(dtype.numpy).reshape(sub)


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
