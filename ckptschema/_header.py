"""The safetensors header: read and checked (one entry check, one tiling check), and encoded.

Reading trusts nothing: the header length is checked against the file size before anything
is allocated, the JSON is parsed with caps and duplicate-key rejection, and every tensor
entry is checked (known dtype, rank, byte length equal to its shape, offsets that tile the
data section exactly).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from ._dtypes import BY_CODE
from ._errors import FormatError
from ._format import MANIFEST_KEY
from ._json import compact_json, strict_json
from ._limits import MAX_ELEMENTS, MAX_RANK, MAX_TENSORS, LimitError, check_header_bytes, check_tensors
from ._sources import Source

__all__ = ["Entry", "Header", "entries_json", "header_bytes", "read_header"]


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
    _check_tiling(entries, where, data_start, data_size)
    return Header(entries, metadata, data_start)


def _check_tiling(entries: dict[str, Entry], where: str, data_start: int, data_size: int) -> None:
    """The tensors tile the data section exactly: sorted by ``(start, end)``, each starts where
    the previous ended, the first at 0 and the last at the end (sorting is linear for the
    usual header, whose entries are already in file order)."""
    offset = data_start
    for entry in sorted(entries.values(), key=operator.attrgetter("start", "end")):
        if entry.start != offset:
            gap = entry.start - offset
            problem = "overlaps the tensor before it" if gap < 0 else f"leaves a gap of {gap} bytes"
            at = entry.start - data_start
            raise FormatError(f"{where}: tensor {entry.key!r} starts at data byte {at}: {problem}")
        offset = entry.end
    if offset - data_start != data_size:
        raise FormatError(f"{where}: tensors cover {offset - data_start} bytes of data but the file has {data_size}")


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
