"""The only module that touches safetensors bytes, files and the OS.

Reading trusts nothing: a path must be a regular file (a FIFO or device would hang or
never end), the header length is checked against the file size before anything is
allocated, the header JSON is parsed with caps and duplicate-key rejection, and every
tensor entry is checked (known dtype, rank, byte length equal to its shape, offsets that
tile the data section exactly). Tensor bytes are read with positioned reads into fresh,
64-byte aligned buffers (a large load on several threads), never through mmap, so a file
truncated by another writer gives an error instead of SIGBUS.

Writing streams each tensor from its own buffer into a temporary file in the target's
directory, fsyncs it, renames it over the target and fsyncs the directory
(`_atomic.atomic_file`): a crash at any instant leaves either the old file or the new one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import math
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO, NamedTuple, NoReturn, Protocol

import numpy as np

from . import _remote
from ._atomic import atomic_file as atomic_file
from ._dtypes import BY_CODE, DType
from ._errors import CheckpointNotFoundError, CkptSchemaError, FormatError, IntegrityError
from ._format import MANIFEST_KEY, PLACEHOLDER_DIGEST, as_bytes, digest
from ._json import compact_json, strict_json
from ._limits import (
    MAX_ELEMENTS,
    MAX_RANK,
    MAX_TENSORS,
    LimitError,
    check_header_bytes,
    check_tensors,
)

__all__ = ["Entry", "Header", "Source", "open_source", "read_header", "read_tensor", "write_file"]

_ALIGN = 64
_HASH_IN_THREAD = 64 << 10  # tensors this large are hashed on other cores while writing
_HASH_WORKERS = 2  # sha256 (~1.5 GB/s a core with SHA-NI) is slower than writing: two keep up


class Source(Protocol):
    """Random access to the bytes of one checkpoint (a local file, an fsspec URL, bytes)."""

    name: str
    size: int

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` with the bytes at `offset`, or raise `FormatError`."""

    def map(self) -> Any:
        """The whole checkpoint as a read-only buffer, without reading it (a memory map)."""

    def close(self) -> None:
        """Release the underlying file."""


class FileSource:
    """A local regular file read with positioned reads (``os.preadv``), never mapped."""

    def __init__(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> None:
        self.name = os.fspath(path)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if not follow_symlinks:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.name, flags)
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(f"{self.name}: cannot open ({e.strerror or e})", self.name) from e
        except OSError as e:
            raise FormatError(f"{self.name}: cannot open ({e.strerror or e})") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{self.name}: not a regular file; checkpoints are read from regular files only")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = st.st_size
        #: What identifies the file opened: a later open of the same path must find the same.
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" else buffer
        done = 0
        while done < len(view):
            try:
                n = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as e:
                raise FormatError(f"{self.name}: read failed at byte {offset + done} ({e.strerror or e})") from e
            if n == 0:
                raise FormatError(
                    f"{self.name}: file ended at byte {offset + done}, expected {len(view) - done} more bytes "
                    f"(was it truncated while being read?)"
                )
            done += n

    def map(self) -> mmap.mmap:
        """A read-only memory map of the file; it stays valid after `close`."""
        try:
            return mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise FormatError(f"{self.name}: cannot memory-map ({e})") from e

    def close(self) -> None:
        os.close(self.fd)


class BytesSource:
    """A checkpoint held in memory (`ckptschema.loads`)."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<bytes>") -> None:
        self.name = name
        self.owner = data
        self.data = memoryview(data).cast("B")
        self.size = len(self.data)

    def read_into(self, offset: int, buffer: memoryview) -> None:
        view = buffer.cast("B") if buffer.format != "B" else buffer
        end = offset + len(view)
        if end > self.size:
            raise FormatError(f"{self.name}: data ends at byte {self.size}, expected {end}")
        view[:] = self.data[offset:end]

    def map(self) -> bytes:
        """The checkpoint's bytes as they are (a copy only if they were mutable)."""
        return self.owner if isinstance(self.owner, bytes) else bytes(self.data)

    def close(self) -> None:
        self.data.release()


def open_source(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> Source:
    """A `Source` for a local path, an fsspec URL (``s3://...``) or an in-memory checkpoint."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BytesSource(source)
    if _remote.is_url(source):
        return _remote.RemoteSource(source)  # type: ignore[arg-type]
    return FileSource(source)


class Entry(NamedTuple):
    """One tensor of a safetensors header: its code, shape, absolute byte range and key."""

    code: str
    shape: tuple[int, ...]
    start: int
    end: int
    key: str

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclasses.dataclass(frozen=True)
class Header:
    """A checked safetensors header."""

    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int

    @property
    def manifest_text(self) -> str | None:
        return self.metadata.get(MANIFEST_KEY)


#: Bytes per element of each header code a file may use (``U8`` also carries ckptschema's own dtypes).
_ITEMSIZE = {code: dtype.numpy.itemsize for code, dtype in BY_CODE.items()} | {"U8": 1}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def read_header(source: Source) -> Header:
    """Read and check the safetensors header of `source` (no tensor bytes are read).

    Raises:
        FormatError: naming the file and what is wrong with its header.
    """
    where = source.name
    if source.size < 8:
        raise FormatError(f"{where}: {source.size} bytes is too short for a safetensors file (needs 8+)")
    prefix = bytearray(8)
    source.read_into(0, memoryview(prefix))
    (length,) = struct.unpack("<Q", prefix)
    try:
        check_header_bytes(length)
    except LimitError as e:
        raise FormatError(f"{where}: {e}") from None
    if 8 + length > source.size:
        raise FormatError(f"{where}: header claims {length} bytes but the file has {source.size - 8} after its length")
    raw = bytearray(length)
    source.read_into(8, memoryview(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: header is not UTF-8 ({e.reason} at byte {8 + e.start})") from e
    del raw
    if not text.startswith("{"):
        raise FormatError(f"{where}: header does not start with '{{' (found {text[:1]!r}); not a safetensors file")
    # The root, a __metadata__ map if the text names one anywhere, and one flat object per tensor.
    max_objects = MAX_TENSORS + 1 + ('"__metadata__"' in text)
    try:
        header = strict_json(text.rstrip(" "), "header", max_objects=max_objects)
    except ValueError as e:
        if str(e) == f"header holds more than {max_objects} objects":  # only a header of too many tensors can
            raise FormatError(f"{where}: header lists more than MAX_TENSORS={MAX_TENSORS} tensors") from e
        raise FormatError(f"{where}: {e}") from e
    return _check_header(header, where, data_start=8 + length, data_size=source.size - 8 - length)


def _check_header(header: Any, where: str, data_start: int, data_size: int) -> Header:
    if not isinstance(header, dict):
        raise FormatError(f"{where}: header is a JSON {type(header).__name__}, expected an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{where}: __metadata__ must map strings to strings")
    try:
        check_tensors(len(header))
    except LimitError as e:
        raise FormatError(f"{where}: {e}") from None
    entries = {key: _check_entry(key, info, where, data_start) for key, info in header.items()}
    offset = data_start
    for entry in entries.values():  # writers lay tensors out in header order: one pass proves the tiling
        if entry.start != offset:
            break
        offset = entry.end
    else:
        if offset - data_start == data_size:
            return Header(entries, metadata, data_start)
    offset = data_start
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != offset:
            gap = entry.start - offset
            problem = "overlaps the tensor before it" if gap < 0 else f"leaves a gap of {gap} bytes"
            raise FormatError(f"{where}: tensor {key!r} starts at data byte {entry.start - data_start}: {problem}")
        offset = entry.end
    if offset - data_start != data_size:
        raise FormatError(f"{where}: tensors cover {offset - data_start} bytes of data but the file has {data_size}")
    return Header(entries, metadata, data_start)


_INT = frozenset({int})


def _check_entry(key: str, info: Any, where: str, data_start: int) -> Entry:
    """One header entry as an `Entry`, or the `FormatError` that says what is wrong with it.

    The checks run at C speed (type sets, `min`, `math.prod`) in the order of the messages.
    """
    if type(info) is not dict or info.keys() != _ENTRY_KEYS:
        found = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise FormatError(f"{where}: tensor {key!r} must have exactly dtype, shape, data_offsets (found {found})")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    itemsize = _ITEMSIZE.get(code) if type(code) is str else None
    if itemsize is None:
        raise FormatError(f"{where}: tensor {key!r} has unknown or unsupported dtype {code!r}")
    if type(shape) is not list or not _INT.issuperset(map(type, shape)) or min(shape, default=0) < 0:
        raise FormatError(f"{where}: tensor {key!r} shape {shape!r} is not a list of non-negative ints")
    if len(shape) > MAX_RANK:
        raise FormatError(f"{where}: tensor {key!r} has rank {len(shape)}, above MAX_RANK={MAX_RANK}")
    if math.prod(filter(None, shape)) > MAX_ELEMENTS:
        raise FormatError(
            f"{where}: tensor {key!r} shape {shape!r} describes more than MAX_ELEMENTS={MAX_ELEMENTS} elements "
            f"(zero dimensions left out)"
        )
    if type(offsets) is not list or len(offsets) != 2 or not _INT.issuperset(map(type, offsets)) or min(offsets) < 0:
        raise FormatError(f"{where}: tensor {key!r} data_offsets {offsets!r} is not two non-negative ints")
    start, end = offsets
    nbytes = math.prod(shape) * itemsize
    if end - start != nbytes:
        raise FormatError(
            f"{where}: tensor {key!r} of {code}{shape} needs {nbytes} bytes but data_offsets span {end - start}"
        )
    return Entry(code, tuple(shape), start + data_start, end + data_start, key)


def aligned_empty(nbytes: int) -> np.ndarray:
    """A fresh uint8 buffer whose data starts on a 64-byte boundary (JAX can alias it)."""
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    skip = -raw.__array_interface__["data"][0] % _ALIGN
    return raw[skip : skip + nbytes]


def read_whole(source: Source) -> bytearray:
    """All of a source's bytes (for small files read whole: an index, a msgpack checkpoint)."""
    data = bytearray(source.size)
    source.read_into(0, memoryview(data))
    return data


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


def entries_json(entries: Iterable[tuple[str, str, list[int], int]]) -> str:
    """The tensor part of a header for ``(key, code, shape, nbytes)`` in file order, as JSON members.

    Byte for byte what `compact_json` writes, built with string joins (a 20,000-tensor
    header would otherwise spend most of a save in 40,000 calls to a JSON encoder); only
    keys that need escaping go through the encoder.
    """
    members = []
    offset = 0
    for key, code, shape, nbytes in entries:
        name = compact_json(key) if _NEEDS_ESCAPE.search(key) else f'"{key}"'
        dims = ",".join(map(str, shape))
        members.append(f'{name}:{{"dtype":"{code}","shape":[{dims}],"data_offsets":[{offset},{offset + nbytes}]}}')
        offset += nbytes
    return ",".join(members)


#: Characters JSON escapes even with ensure_ascii=False.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def header_bytes(entries: str, metadata: dict[str, str]) -> bytes:
    """The length-prefixed, space-padded safetensors header: metadata first, then `entries_json`."""
    members = [f'"__metadata__":{compact_json(metadata)}'] if metadata else []
    if entries:
        members.append(entries)
    text = ("{" + ",".join(members) + "}").encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_stream(out: BinaryIO, header: bytes, arrays: list[np.ndarray], hashes: bool) -> list[str | None]:
    """Write a header then each array's bytes; return their sha256 digests if asked.

    Arrays are hashed on worker threads while the main thread writes (all release
    the GIL), so a checksummed save costs about one pass over the data.
    """
    out.write(header)
    digests: list[Any] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=_HASH_WORKERS) as pool:
        for array in arrays:
            data = as_bytes(array)
            if not hashes:
                digests.append(None)
            elif len(data) >= _HASH_IN_THREAD:
                digests.append(pool.submit(lambda d: hashlib.sha256(d).hexdigest(), data))
            else:
                digests.append(hashlib.sha256(data).hexdigest())
            out.write(data)
        return [d.result() if isinstance(d, concurrent.futures.Future) else d for d in digests]


def write_file(out: BinaryIO, header_for: Any, arrays: list[np.ndarray], hashes: bool) -> list[str | None]:
    """Stream a checkpoint into a seekable file whose header depends on the digests.

    `header_for(digests)` builds the header bytes; it is called first with placeholder
    digests (all the same length as real ones, so the header length is final), and again
    with the real digests once the data is written, which are then written in place.
    """
    placeholder = [(PLACEHOLDER_DIGEST if hashes else None) for _ in arrays]
    start = out.tell()
    first = header_for(placeholder)
    digests = write_stream(out, first, arrays, hashes)
    if hashes:
        final = header_for(digests)
        if len(final) != len(first):  # pragma: no cover - digests are fixed-length hex
            raise AssertionError("header length changed with digests")
        end = out.tell()
        out.seek(start)
        out.write(final)
        out.seek(end)
    return digests


def verify(array: np.ndarray, expected: str | None, key: str, where: str) -> None:
    """Raise `IntegrityError` if an array's bytes do not have the expected digest."""
    if expected is not None and digest(array) != expected:
        raise IntegrityError(f"{where}: tensor {key!r} fails its sha256 checksum; the file is corrupt")
