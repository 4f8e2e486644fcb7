"""Round-trip properties: any tree comes back exactly, through files and bytes, with and without a template."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

import ckptschema
from ckptschema._dtypes import jax_can_hold

from .helpers import assert_same_tree
from .strategies import array_trees, arrays, floats, nans, trees


@contextlib.contextmanager
def _collisions_rejected():
    """Random keys may contain the separator; a collision must be refused, never renamed."""
    try:
        yield
    except ckptschema.CkptSchemaError as e:
        assert "both map to the tensor key" in str(e)
        reject()


def _map_arrays(fn: Any, tree: Any) -> Any:
    """Map numpy leaves, keeping dict order (`jax.tree_util.tree_map` sorts dict keys)."""
    if isinstance(tree, np.ndarray):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_arrays(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return type(tree)(*(_map_arrays(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(fn, v) for v in tree)
    return tree


def _abstract(tree: Any) -> Any:
    """The template a model would give: arrays become ShapeDtypeStructs, scalars stay."""
    return _map_arrays(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@given(trees())
def test_bytes_round_trip_without_template_is_exact(tree):
    with _collisions_rejected():
        data = ckptschema.dumps(tree)
    assert_same_tree(ckptschema.loads(data), tree, same_classes=False)


@given(trees())
def test_bytes_round_trip_with_concrete_template_keeps_template_classes(tree):
    with _collisions_rejected():
        data = ckptschema.dumps(tree)
    assert_same_tree(ckptschema.loads(data, template=tree), tree)


@given(trees())
def test_bytes_round_trip_with_abstract_template_is_exact(tree):
    with _collisions_rejected():
        data = ckptschema.dumps(tree)
    assert_same_tree(ckptschema.loads(data, template=_abstract(tree)), tree)


@given(trees(), st.sampled_from([".", "/", "::"]))
def test_file_round_trip_is_exact_for_any_separator(tmp_path_factory, tree, separator):
    path = tmp_path_factory.mktemp("rt") / "tree.safetensors"
    with _collisions_rejected():
        ckptschema.save(path, tree, separator=separator)
    assert_same_tree(ckptschema.load(path), tree, same_classes=False)
    assert_same_tree(ckptschema.load(path, template=tree), tree)


def _bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


@given(st.lists(floats, min_size=1, max_size=4) | st.lists(nans, min_size=1, max_size=4))
def test_float_scalars_keep_every_bit_through_files_and_bytes(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("f") / "floats.safetensors"
    ckptschema.save(path, {"x": values})
    data = ckptschema.dumps({"x": values})
    for loaded in (
        ckptschema.load(path),
        ckptschema.load(path, template={"x": values}),
        ckptschema.loads(data),
        ckptschema.loads(data, template={"x": [0.0] * len(values)}),
    ):
        assert _bits(loaded["x"]) == _bits(values)


@given(arrays())
def test_every_dtype_loads_as_jax_array_when_jax_can_hold_it(array):
    loaded = ckptschema.loads(ckptschema.dumps({"x": array}))["x"]
    expected_type = jax.Array if jax_can_hold(array.dtype.name) else np.ndarray
    assert isinstance(loaded, expected_type)


@given(trees())
def test_manifest_of_matches_what_save_records(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("m") / "tree.safetensors"
    with _collisions_rejected():
        saved = ckptschema.save(path, tree)
    assert ckptschema.manifest_of(tree) == saved == ckptschema.read_manifest(path)


def _tensor_paths(tree: Any) -> list[tuple[Any, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [tuple(_part(k) for k in path) for path, leaf in leaves if isinstance(leaf, np.ndarray)]


def _part(entry: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    raise AssertionError(entry)


def _replace(tree: Any, path: tuple[Any, ...], new: Any) -> Any:
    leaf = _leaf_at(tree, path)
    return _map_arrays(lambda x: new if x is leaf else x, tree)


@given(array_trees(), st.data())
def test_template_with_one_wrong_shape_names_that_path(tree, data):
    with _collisions_rejected():
        blob = ckptschema.dumps(tree)
    path = data.draw(st.sampled_from(_tensor_paths(tree)))
    leaf = _leaf_at(tree, path)
    wrong = jax.ShapeDtypeStruct((*leaf.shape, 2), leaf.dtype)
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.loads(blob, template=_abstract(_replace(tree, path, wrong)))
    assert [(i.kind, i.path) for i in e.value.issues] == [("shape", "/".join(map(str, path)))]


@given(array_trees(), st.data())
def test_template_with_one_wrong_dtype_names_that_path(tree, data):
    with _collisions_rejected():
        blob = ckptschema.dumps(tree)
    path = data.draw(st.sampled_from(_tensor_paths(tree)))
    leaf = _leaf_at(tree, path)
    other = np.dtype(np.float32) if leaf.dtype != np.float32 else np.dtype(np.int32)
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.loads(blob, template=_abstract(_replace(tree, path, jax.ShapeDtypeStruct(leaf.shape, other))))
    assert [(i.kind, i.path) for i in e.value.issues] == [("dtype", "/".join(map(str, path)))]


def _leaf_at(tree: Any, path: tuple[Any, ...]) -> np.ndarray:
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if tuple(_part(k) for k in p) == path:
            return leaf
    raise AssertionError(path)
