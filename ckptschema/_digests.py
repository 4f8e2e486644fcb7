"""The digest algorithms of tensor checksums: the one module that names them and hashes bytes.

Two algorithms, both giving 32-byte digests written as 64 lowercase hex characters:

- ``blake3`` (the default): faster than sha256 even on one core of a CPU with SHA-NI
  (sha256's dedicated instruction; BLAKE3 is built on wide SIMD instead), and a tree hash, so
  one large input can be split over several cores, which sha256 cannot. A save hashes while
  it writes, on the same cores, so fewer cycles per byte is what keeps a checksummed save
  near one pass over the data. On a tiny tensor the per-call overhead dominates either way.
- ``sha256``: what every language's standard library has, for readers that cannot add a
  BLAKE3 library, and what files written before ``blake3`` record.

`benchmarks/digests.py` measures both on the machine at hand (one buffer, the benchmark
trees as one stream and one digest per tensor, and hashing while another thread writes).

Every function takes ``bytes``, a ``memoryview`` (of any item format, a numpy array's
included) or a numpy array, and hashes its bytes in C order without copying them when they
are already C-contiguous. The BLAKE3 bindings accept only buffers of unsigned bytes, so
views are recast to bytes (a free relabelling) before they reach it.

This module is part of the byte layer: it imports no manifest model and no pydantic.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import blake3
import numpy as np

__all__ = ["ALGORITHMS", "DEFAULT", "HEX_LENGTH", "THREADS_FROM", "Hasher", "check_algorithm", "digest", "hasher"]

#: The digest algorithms a checkpoint may record, by the name the manifest spells.
ALGORITHMS: tuple[str, ...] = ("blake3", "sha256")
#: The algorithm a save uses unless told otherwise (see the module docstring for why).
DEFAULT = "blake3"
#: The length of every digest in hex characters (both algorithms give 32 bytes).
HEX_LENGTH = 64
#: Inputs of at least this many bytes are hashed by BLAKE3 on every core; smaller ones on
#: one: below about a megabyte, handing work to the threads costs more than it saves.
THREADS_FROM = 1 << 20

Bytes = bytes | bytearray | memoryview | np.ndarray


class _State(Protocol):
    def update(self, data: memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


class Hasher:
    """An incremental digest: `update` it with the bytes in order, then read `hexdigest`.

    Made by `hasher`; accepts the same inputs as `digest`, one piece at a time.
    """

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    def update(self, data: Bytes) -> None:
        """Hash the next bytes of the input.

        Example:
            >>> h = hasher("sha256", 3)
            >>> h.update(b"ab")
            >>> h.update(np.frombuffer(b"c", np.uint8))
            >>> h.hexdigest() == digest(b"abc", "sha256")
            True
        """
        self._state.update(_octets(data))

    def hexdigest(self) -> str:
        """The digest of everything hashed so far, as 64 lowercase hex characters.

        Example:
            >>> hasher("blake3", 0).hexdigest()
            'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'
        """
        return self._state.digest().hex()  # faster than blake3's own hexdigest()


def check_algorithm(name: object) -> str:
    """Return `name` if it is one of `ALGORITHMS`, else raise `ValueError` listing them.

    Args:
        name: the algorithm name given by a caller (any object: it comes from user input).

    Returns:
        The name, unchanged.

    Raises:
        ValueError: `name` is not a supported algorithm name.

    Example:
        >>> check_algorithm("blake3")
        'blake3'
        >>> check_algorithm("md5")
        Traceback (most recent call last):
        ValueError: unknown checksum algorithm 'md5'; supported: 'blake3', 'sha256'
    """
    if isinstance(name, str) and name in ALGORITHMS:
        return name
    raise ValueError(_unknown(name))


def hasher(algorithm: str, nbytes: int) -> Hasher:
    """A fresh `Hasher` for an input of about `nbytes` bytes.

    `nbytes` only tunes the work: BLAKE3 hashes inputs of at least `THREADS_FROM` bytes on
    every core and smaller ones on one. The digest does not depend on it.

    Args:
        algorithm: one of `ALGORITHMS`.
        nbytes: the expected input size in bytes.

    Returns:
        A hasher to `update` and then read with `hexdigest`.

    Raises:
        ValueError: `algorithm` is not supported.

    Example:
        >>> h = hasher("blake3", 6)
        >>> h.update(b"abc")
        >>> h.update(memoryview(b"def"))
        >>> h.hexdigest() == digest(b"abcdef", "blake3")
        True
    """
    if check_algorithm(algorithm) == "sha256":
        return Hasher(hashlib.sha256())
    return Hasher(_blake3(nbytes))


def digest(data: Bytes, algorithm: str) -> str:
    """The hex digest of `data`'s bytes (an array's in C order, as a checkpoint stores them).

    Args:
        data: bytes, a memoryview, or a numpy array of any dtype and shape.
        algorithm: one of `ALGORITHMS`.

    Returns:
        64 lowercase hex characters.

    Raises:
        ValueError: `algorithm` is not supported.

    Example:
        >>> digest(b"abc", "sha256")
        'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
        >>> digest(np.arange(3, dtype=np.uint16), "blake3") == digest(b"\\0\\0\\1\\0\\2\\0", "blake3")
        True
    """
    octets = _octets(data)
    if algorithm == "blake3":
        if octets.nbytes < THREADS_FROM:
            return blake3.blake3(octets).digest().hex()
        return blake3.blake3(octets, max_threads=blake3.blake3.AUTO).digest().hex()
    if algorithm == "sha256":
        return hashlib.sha256(octets).hexdigest()
    raise ValueError(_unknown(algorithm))


def _unknown(name: object) -> str:
    supported = ", ".join(repr(a) for a in ALGORITHMS)
    return f"unknown checksum algorithm {name!r}; supported: {supported}"


def _blake3(nbytes: int) -> blake3.blake3:
    """A BLAKE3 state for `nbytes` bytes: threaded from `THREADS_FROM` bytes, else the default one thread.

    Threads are always ``AUTO`` (one shared pool): a state made with an explicit count builds
    a pool of its own, a fraction of a millisecond each. Even ``max_threads=1`` spelt out
    costs more than hashing a tiny tensor, so small states take the default.
    """
    return blake3.blake3(max_threads=blake3.blake3.AUTO) if nbytes >= THREADS_FROM else blake3.blake3()


def _octets(data: Bytes) -> memoryview:
    """`data`'s bytes as a flat unsigned-byte view: a relabelling, or a C-order copy if strided."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format == "B" and view.c_contiguous:
        return view
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B") if view.nbytes else memoryview(b"")
