"""The load functions: `load`, `loads`, `read_manifest`; a file with a manifest, with or without a template."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _tensors
from ._agreement import Subtree, lookup_containers, select
from ._blocks import read_sharded
from ._compare import Match, compare, raise_or_warn
from ._dtypes import DTYPES, jax_can_hold
from ._errors import FormatError
from ._flatten import flatten_template
from ._gcpause import gc_paused
from ._header import Entry, Header
from ._manifest import Manifest
from ._opening import PathLike, one_version, open_checkpoint, tracking
from ._placement import place, scalar_like
from ._plain import load_plain
from ._rebuild import build_like_template, build_tree
from ._scalars import scalar_value
from ._skeleton import iter_nodes
from ._sources import Source

__all__ = ["load", "loads", "read_manifest"]


@gc_paused
@one_version
def read_manifest(path: PathLike) -> Manifest:
    """Read a checkpoint's manifest from its header; no tensor bytes are read.

    Args:
        path: the checkpoint: a file, an fsspec URL, or a sharded checkpoint's directory or index
            (local, or a URL such as ``s3://bucket/run/step-100``).

    Returns:
        The `Manifest`, with the header's user metadata as `Manifest.metadata`.

    Raises:
        CheckpointNotFoundError: if there is no checkpoint at `path` (also a `FileNotFoundError`).
        FormatError: if the file is not a valid checkpoint or has no manifest.
        CheckpointChangedError: if saves replaced the checkpoint during each of `READ_ATTEMPTS`
            reads (a read that finds it replaced midway starts over on the new version).

    Example:
        >>> import numpy as np, ckptschema
        >>> tree = {"w": np.zeros((2, 2), np.float16)}
        >>> _ = ckptschema.save(tmp_path / "m.safetensors", tree, metadata={"step": "100"})
        >>> manifest = ckptschema.read_manifest(tmp_path / "m.safetensors")
        >>> manifest.tensors["w"].shape, manifest.metadata
        ((2, 2), {'step': '100'})
    """
    with open_checkpoint(path) as (src, _, manifest):
        if manifest is None:
            raise FormatError(f"{src.name}: no ckptschema manifest in the header (a plain safetensors file)")
        return manifest


@gc_paused
@one_version
def load(
    path: PathLike,
    template: Any = None,
    *,
    strict: bool = True,
    subtree: Subtree = None,
    verify: bool = False,
    separator: str | None = None,
    progress: bool = False,
    mmap: bool = False,
) -> Any:
    """Load a checkpoint, checked against a template when one is given.

    Without a template the exact saved tree comes back (containers, key order and types,
    None, namedtuples, FrozenDict, scalars) with `jax.Array` leaves. With a template,
    everything is checked before any tensor is read: structure, paths, shapes, dtypes.
    Nothing is cast or broadcast. The result has the template's own types and each leaf is
    placed like its template leaf; a leaf sharded over several devices (any
    `jax.sharding.NamedSharding`: rows, columns, 2-D blocks, replicated) is read block by
    block: each process reads only the blocks of its own devices, each distinct block once,
    and no collective runs, so every process of a multi-host mesh loads on its own. With
    ``verify=True`` such a leaf is read whole (once per process, also when the sharding
    spans processes: a whole-tensor digest needs the whole tensor) and its devices' blocks
    are placed from that copy.

    In a ``jax.distributed`` run, each process calls `load` with a template whose shardings
    span processes and reads only its own blocks (no collective runs); without a template
    every process reads the whole tree onto its default device.

    Args:
        path: the checkpoint: a file, an fsspec URL, or a sharded checkpoint's directory or index
            (local, or a URL such as ``s3://bucket/run/step-100``).
        template: a pytree whose leaves are arrays, numpy arrays, `jax.ShapeDtypeStruct`
            (e.g. ``jax.eval_shape(model.init, ...)``) or Python scalars.
        strict: if False, tensors in the file that the template lacks are allowed
            (reported as a warning); missing ones are still an error.
        subtree: load only this part, as a separator-joined path (``"params.Dense_0"``)
            or a tuple of keys; only its bytes are read.
        verify: check every tensor's checksum; raise `IntegrityError` on the first bad one.
            Files saved with ``checksum=None``, and plain safetensors files, have none to check.
        separator: for files without a manifest, the separator that joined their keys.
        progress: show a progress bar over the bytes read (only when stderr is a terminal).
        mmap: give numpy template leaves as read-only views of a memory map of the file:
            nothing is copied, and nothing is read until used. The file must then not be
            truncated or rewritten in place while they live (the process would die of
            SIGBUS); replacing it by rename, as `save` does, is safe. Other leaves are read
            as usual.

    Returns:
        The tree.

    Raises:
        ValidationError: listing every mismatch with the template, by path.
        CheckpointNotFoundError: if there is no checkpoint at `path` (also a `FileNotFoundError`,
            so ``except FileNotFoundError:`` starts afresh when there is none yet).
        FormatError: if the file is not a valid checkpoint.
        CheckpointChangedError: if saves replaced the checkpoint during each of `READ_ATTEMPTS`
            loads (a load that finds it replaced midway starts over on the new version, so it
            never returns a tree that mixes two versions).
        IntegrityError: with ``verify=True``, for a tensor whose bytes changed.

    Example:
        >>> import jax, jax.numpy as jnp, ckptschema
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
        >>> _ = ckptschema.save(tmp_path / "p.safetensors", params)
        >>> abstract = jax.eval_shape(lambda: params)
        >>> ckptschema.load(tmp_path / "p.safetensors", template=abstract)["w"].shape
        (2, 3)
    """
    with open_checkpoint(path) as (source, header, manifest), tracking(source, header, "loading", progress) as tracked:
        return _load(tracked, header, manifest, template, strict, subtree, verify, separator, mmap)


@gc_paused
def loads(
    data: bytes | bytearray | memoryview,
    template: Any = None,
    *,
    strict: bool = True,
    subtree: Subtree = None,
    verify: bool = False,
    separator: str | None = None,
    progress: bool = False,
    mmap: bool = False,
) -> Any:
    """Load a checkpoint from bytes (as made by `dumps`); the options are those of `load`.

    Args:
        data: the checkpoint's bytes.
        template: as for `load`.
        strict: if False, tensors that the template lacks are allowed (reported as a warning).
        subtree: load only this part, as a separator-joined path or a tuple of keys.
        verify: check every tensor's checksum; raise `IntegrityError` on the first bad one.
        separator: for data without a manifest, the separator that joined their keys.
        progress: show a progress bar over the bytes read (only when stderr is a terminal).
        mmap: give numpy template leaves as read-only views of `data` instead of copies.

    Returns:
        The tree.

    Raises:
        ValidationError: listing every mismatch with the template, by path.
        FormatError: if the bytes are not a valid checkpoint.
        IntegrityError: with ``verify=True``, for a tensor whose bytes changed.

    Example:
        >>> import numpy as np, ckptschema
        >>> ckptschema.loads(ckptschema.dumps({"a": [1, 2.5, None]}))
        {'a': [1, 2.5, None]}
    """
    with open_checkpoint(data) as (source, header, manifest), tracking(source, header, "loading", progress) as tracked:
        return _load(tracked, header, manifest, template, strict, subtree, verify, separator, mmap)


def _load(
    source: Source,
    header: Header,
    manifest: Manifest | None,
    template: Any,
    strict: bool,
    subtree: Subtree,
    verify: bool,
    separator: str | None,
    mmap: bool,
) -> Any:
    if manifest is None:
        return load_plain(source, header, template, strict, subtree, separator or ".", mmap)
    node, prefix = select(manifest, subtree, source.name)
    checksum = manifest.checksum if verify else None
    if template is None:
        lookup_containers(node, source.name)
        tensors = [n for _, n in iter_nodes(node) if n["kind"] == "tensor"]
        arrays = _read_tensors(source, header, tensors, checksum)
        return build_tree(node, [place(a, n["dtype"]) for n, a in zip(tensors, arrays)])
    expected = flatten_template(template, manifest.separator)
    result = compare(node, expected.skeleton, prefix, likes=expected.likes)
    raise_or_warn(result.issues, strict, source.name)
    return build_like_template(expected, _values(source, header, result.matches, checksum, mmap))


def _values(source: Source, header: Header, matches: list[Match], checksum: str | None, mmap: bool) -> list[Any]:
    """The value of each match, placed like its template leaf.

    A file scalar takes its template leaf's form; a tensor that the template leaf spreads
    over several devices is read block by block (`read_sharded`; whole when a `checksum` is
    to be verified);
    every other tensor is read with the rest in as few calls as the layout allows, or mapped
    when ``mmap`` and its template leaf is a numpy array.
    """
    values: list[Any] = [None] * len(matches)
    read: list[int] = []
    spread: list[tuple[int, Any]] = []
    for i, m in enumerate(matches):
        if m.found["kind"] == "scalar":
            values[i] = scalar_like(scalar_value(m.found), m.like)
        elif (sharding := _spread_over(m.like, m.found["dtype"])) is None:
            read.append(i)
        else:
            spread.append((i, sharding))
    tensors = [matches[i].found for i in read]
    mapped = [mmap and isinstance(matches[i].like, np.ndarray) for i in read]
    for i, node, array in zip(read, tensors, _read_tensors(source, header, tensors, checksum, mapped)):
        values[i] = place(array, node["dtype"], matches[i].like)
    for i, sharding in spread:
        found = matches[i].found
        entry, dtype = header.entries[found["key"]], DTYPES[found["dtype"]]
        values[i] = read_sharded(source, entry, dtype, found["shape"], sharding, found.get("digest"), checksum)
    return values


def _spread_over(like: Any, dtype_name: str) -> Any:
    """The sharding of a template leaf that spreads its tensor over several devices, else None."""
    sharding = None if isinstance(like, np.ndarray) else getattr(like, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1 and jax_can_hold(dtype_name):
        return sharding
    return None


def _read_tensors(
    source: Source,
    header: Header,
    nodes: list[dict[str, Any]],
    checksum: str | None,
    mapped: list[bool] | None = None,
) -> list[np.ndarray]:
    """The arrays of tensor nodes, in their order, read in as few calls as the layout allows;
    a node whose `mapped` flag is set gets a view of a memory map of the file instead. Each
    is verified against its digest by the `checksum` algorithm, if one is given."""

    def wanted(indices: Iterable[int]) -> list[tuple[Entry, Any, list[int]]]:
        return [(header.entries[nodes[i]["key"]], DTYPES[nodes[i]["dtype"]], nodes[i]["shape"]) for i in indices]

    flags = mapped or []
    viewed = [i for i, flag in enumerate(flags) if flag]
    order: list[int] | range = [i for i, flag in enumerate(flags) if not flag] if viewed else range(len(nodes))
    arrays = _tensors.read_tensors(source, wanted(order))
    if viewed:
        order = [*order, *viewed]
        arrays += _tensors.map_tensors(source, source.map(), wanted(viewed))
    if checksum is not None:
        for i, array in zip(order, arrays):
            _tensors.verify(array, nodes[i].get("digest"), checksum, nodes[i]["key"], source.name)
    if not viewed:
        return arrays
    result: list[np.ndarray] = [arrays[0]] * len(nodes)
    for i, array in zip(order, arrays):
        result[i] = array
    return result
