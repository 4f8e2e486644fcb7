"""Each tool's save and load, written the way its documentation shows.

A `Tool` saves a pytree of `jax.Array`s to a path and loads it back given the template
its `template` names: the abstract one (``jax.ShapeDtypeStruct`` leaves) for the tools that
take one, the source tree itself ("params") or zero-filled numpy arrays ("numpy"). Imports
happen in `prepare`, so a fresh process can import before it measures memory.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from typing import Any

import jax
import numpy as np
from _workloads import dot_flatten, dot_unflatten


class Tool:
    name = ""
    note = ""
    suffix = ".bin"
    saves = True
    loads = True
    floor_of: str | None = None  # floors and variants read another tool's file
    template = "abstract"  # what loads get: "abstract" (ShapeDtypeStructs), "params" (the source tree), "numpy"

    def prepare(self) -> None:
        """Import what the tool needs (untimed)."""

    def clear(self, path: str) -> None:
        """Remove a previous save (untimed)."""

    def save(self, tree: Any, path: str) -> None:
        raise NotImplementedError

    def load(self, path: str, template: Any) -> Any:
        raise NotImplementedError


class CkptSchema(Tool):
    name = "ckptschema"
    note = "template=ShapeDtypeStructs, strict, jax out; save with sha256 + fsync"
    suffix = ".safetensors"

    def __init__(self, verify: bool = False, template: str = "abstract") -> None:
        self.verify = verify
        self.template = template
        if verify:
            self.name = "ckptschema verify=True"
            self.note = "as above plus the digest of every tensor checked on load"
        if template == "params":
            self.name = "ckptschema template=params"
            self.note = "template = the jax.Array tree itself (load(path, template=params))"
        if template == "numpy":
            self.name = "ckptschema template=numpy"
            self.note = "template = zero-filled np.ndarrays of the right shapes/dtypes, numpy out"
        if verify or template != "abstract":
            self.saves = False
            self.floor_of = "ckptschema"

    def prepare(self) -> None:
        import ckptschema

        self.ck = ckptschema

    def save(self, tree: Any, path: str) -> None:
        self.ck.save(path, tree)

    def load(self, path: str, template: Any) -> Any:
        return self.ck.load(path, template=template, verify=self.verify)


class SafetensorsNumpy(Tool):
    name = "safetensors.numpy"
    note = "save_file/load_file + '.'-join (un)flatten, numpy out"
    suffix = ".safetensors"

    def prepare(self) -> None:
        import safetensors.numpy

        self.st = safetensors.numpy

    def save(self, tree: Any, path: str) -> None:
        self.st.save_file({k: np.asarray(v) for k, v in dot_flatten(tree).items()}, path)

    def load(self, path: str, template: Any) -> Any:
        return dot_unflatten(self.st.load_file(path))


class SafetensorsNumpyFsync(SafetensorsNumpy):
    """safetensors.numpy's save made as durable as ckptschema's: fsync of the file and its folder."""

    name = "safetensors.numpy+fsync"
    note = "save_file, then os.fsync of the file and of its directory (save only)"
    loads = False  # its file and load are safetensors.numpy's

    def save(self, tree: Any, path: str) -> None:
        super().save(tree, path)
        for target in (path, os.path.dirname(os.path.abspath(path))):
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class SafetensorsFlax(Tool):
    name = "safetensors.flax"
    note = "save_file/load_file + '.'-join (un)flatten, jax out"
    suffix = ".safetensors"

    def prepare(self) -> None:
        import safetensors.flax

        self.st = safetensors.flax

    def save(self, tree: Any, path: str) -> None:
        self.st.save_file(dot_flatten(tree), path)

    def load(self, path: str, template: Any) -> Any:
        return dot_unflatten(self.st.load_file(path))


class FlaxMsgpack(Tool):
    name = "flax msgpack"
    note = "serialization.to_bytes/from_bytes(template) via a file, numpy out"
    suffix = ".msgpack"

    def prepare(self) -> None:
        from flax import serialization

        self.ser = serialization

    def save(self, tree: Any, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.ser.to_bytes(tree))

    def load(self, path: str, template: Any) -> Any:
        with open(path, "rb") as f:
            return self.ser.from_bytes(template, f.read())


class Orbax(Tool):
    name = "orbax"
    note = "StandardCheckpointer save (+wait_until_finished) / restore(abstract target)"
    suffix = ".orbax"

    def prepare(self) -> None:
        import orbax.checkpoint as ocp

        self.ckptr = ocp.StandardCheckpointer()

    def clear(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def save(self, tree: Any, path: str) -> None:
        self.ckptr.save(os.path.abspath(path), tree)
        self.ckptr.wait_until_finished()

    def load(self, path: str, template: Any) -> Any:
        return self.ckptr.restore(os.path.abspath(path), template)


class Equinox(Tool):
    name = "equinox"
    note = "tree_serialise_leaves / tree_deserialise_leaves(template), jax out"
    suffix = ".eqx"

    def prepare(self) -> None:
        import equinox

        self.eqx = equinox

    def save(self, tree: Any, path: str) -> None:
        self.eqx.tree_serialise_leaves(path, tree)

    def load(self, path: str, template: Any) -> Any:
        return self.eqx.tree_deserialise_leaves(path, template)


class Pickle(Tool):
    name = "pickle"
    note = "pickle.dump/load (protocol 5) of the jax tree, jax out"
    suffix = ".pkl"

    def save(self, tree: Any, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump(tree, f, protocol=5)

    def load(self, path: str, template: Any) -> Any:
        with open(path, "rb") as f:
            return pickle.load(f)


class FloorReadinto(Tool):
    """The floor: the raw safetensors file read from the page cache into a reused buffer."""

    name = "floor: readinto"
    note = "whole file into one preallocated, reused buffer (not a tree)"
    saves = False
    floor_of = "safetensors.numpy"

    def __init__(self) -> None:
        self.buffer: bytearray | None = None

    def load(self, path: str, template: Any) -> Any:
        size = os.path.getsize(path)
        if self.buffer is None or len(self.buffer) != size:
            self.buffer = bytearray(size)  # allocated once; later runs reuse it
        with open(path, "rb", buffering=0) as f:
            view = memoryview(self.buffer)
            done = 0
            while done < size:
                done += f.readinto(view[done:])
        return None


def _header(path: str) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


_CODES = {"F32": np.float32, "BF16": jax.numpy.bfloat16, "F16": np.float16, "I32": np.int32}


class FloorAlignedDevicePut(Tool):
    """A second, jax-out floor: per tensor, preadv into a fresh 64-byte aligned buffer, device_put."""

    name = "floor: preadv+device_put"
    note = "per tensor: fresh 64-B aligned buffer, os.preadv, jax.device_put (flat dict, no checks)"
    saves = False
    floor_of = "safetensors.numpy"

    def load(self, path: str, template: Any) -> Any:
        start, header = _header(path)  # ~1 ms; done by any real loader
        out = {}
        fd = os.open(path, os.O_RDONLY)
        try:
            for key, info in header.items():
                begin, end = info["data_offsets"]
                n = end - begin
                raw = np.empty(n + 64, np.uint8)
                skip = -raw.ctypes.data % 64
                buf = raw[skip : skip + n]
                done = 0
                while done < n:
                    done += os.preadv(fd, [memoryview(buf)[done:]], start + begin + done)
                out[key] = jax.device_put(buf.view(_CODES[info["dtype"]]).reshape(info["shape"]))
        finally:
            os.close(fd)
        return dot_unflatten(out)


def all_tools() -> list[Tool]:
    return [
        CkptSchema(),
        CkptSchema(verify=True),
        CkptSchema(template="params"),
        CkptSchema(template="numpy"),
        SafetensorsNumpy(),
        SafetensorsNumpyFsync(),
        SafetensorsFlax(),
        FlaxMsgpack(),
        Orbax(),
        Equinox(),
        Pickle(),
        FloorReadinto(),
        FloorAlignedDevicePut(),
    ]


def size_on_disk(path: str) -> int:
    """Bytes of a saved checkpoint: the file, or every file under a checkpoint folder (orbax)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def by_name(name: str) -> Tool:
    return next(t for t in all_tools() if t.name == name)
