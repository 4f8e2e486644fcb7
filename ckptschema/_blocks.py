"""Tensors that a template spreads over several devices: each process reads only its devices' blocks.

A template leaf whose sharding spans several devices is loaded block by block.
`read_sharded` asks the sharding which block each of this process's devices holds
(``addressable_devices_indices_map``), reads each distinct block once (replicas share it)
with one `_tensors.read_blocks` call, puts each block on its device and assembles the
global array with ``jax.make_array_from_single_device_arrays``. Nothing is gathered and no
collective runs, so every process of a multi-host mesh can call it on its own, reading only
its own bytes, whatever the `NamedSharding` (rows, columns, 2-D blocks, replicated, a middle
axis).

A whole-tensor digest can only be checked over the whole tensor: with a checksum to verify,
each process reads the whole tensor once, checks it, and places its devices' blocks from that
host copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ._dtypes import DType
from ._header import Entry
from ._sources import Source
from ._tensors import read_blocks, read_tensor, verify

__all__ = ["read_sharded"]


def read_sharded(
    source: Source,
    entry: Entry,
    dtype: DType,
    shape: Sequence[int],
    sharding: jax.sharding.Sharding,
    expected: str | None = None,
    checksum: str | None = None,
) -> jax.Array:
    """The tensor of `entry` as a `jax.Array` of `sharding`, built from this process's blocks only.

    Without a `checksum`, only the bytes of the blocks of this process's devices are read,
    each distinct block once. With one, the whole tensor is read once and its digest checked
    against `expected` before any block is placed: the cost of ``verify=True`` on a
    sharding that spans processes is that every process reads the whole tensor (its own
    blocks are then cut from that copy; still no bytes cross between processes).

    Raises:
        FormatError: if the file ends early, or for bits set above a narrow dtype's width.
        IntegrityError: with a `checksum`, if the tensor's bytes do not have the `expected` digest.

    Example:
        >>> import ckptschema, jax, numpy as np
        >>> from ckptschema import _header, _sources
        >>> from ckptschema._dtypes import DTYPES
        >>> source = _sources.BytesSource(ckptschema.dumps({"w": np.arange(8, dtype=np.int32)}))
        >>> entry = _header.read_header(source).entries["w"]
        >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
        >>> sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
        >>> read_sharded(source, entry, DTYPES["int32"], (8,), sharding).tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    shape = tuple(shape)
    placement = sharding.addressable_devices_indices_map(shape)
    devices = list(placement)
    indices = [placement[device] or () for device in devices]
    if checksum is None:
        blocks: list[Any] = read_blocks(source, entry, dtype, shape, indices)
    else:
        whole = read_tensor(source, entry, dtype, shape)
        verify(whole, expected, checksum, entry.key, source.name)
        blocks = [whole[index] for index in indices]
    return jax.make_array_from_single_device_arrays(shape, sharding, jax.device_put(blocks, devices))
