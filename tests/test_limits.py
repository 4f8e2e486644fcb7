"""The reader's limits, and `save` refusing, before the first byte, every file the reader would refuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import ckptschema
from ckptschema._header import header_bytes
from ckptschema._limits import MAX_DEPTH, MAX_INT_DIGITS, MAX_TENSORS

DEPTH_ERROR = (
    f"the tree is deeper than MAX_DEPTH={MAX_DEPTH} (the root is depth 0; each container and wrapper adds one)"
)
INT_ERROR = f"an integer of more than MAX_INT_DIGITS={MAX_INT_DIGITS} digits"
HEADER_HINT = (
    " (readers refuse larger ones); each tensor takes about 110 bytes plus its key and its path's last part, "
    "so use shorter keys or separator=, checksum=None (43 bytes less per tensor), or several checkpoints"
)


def _file_with_manifest(skeleton: dict | str) -> bytes:
    """A checkpoint with no tensors whose manifest has this skeleton (or skeleton JSON text), written by hand."""
    text = skeleton if isinstance(skeleton, str) else json.dumps(skeleton)
    manifest = '{"version":1,"framework":"jax","separator":".","checksum":null,"skeleton":' + text + "}"
    return header_bytes("", {"ckptschema": manifest})


def _nested(kind: str, depth: int) -> dict:
    """A skeleton whose one leaf (``none``) is at `depth`, under dicts, lists or wrappers."""
    node: dict = {"kind": "none"}
    for _ in range(depth):
        if kind == "dict":
            node = {"kind": "dict", "type": None, "keys": ["a"], "children": [node]}
        elif kind == "list":
            node = {"kind": "list", "children": [node]}
        else:
            node = {"kind": "wrapper", "type": "flax.nnx.Param", "metadata": {}, "child": node}
    return node


def _deep_tree(kind: str, depth: int) -> object:
    tree: object = np.arange(2, dtype=np.int8)
    for _ in range(depth):
        tree = {"a": tree} if kind == "dict" else [tree]
    return tree


def _saved(tmp_path, tree: object = None) -> tuple[str, bytes]:
    """A good checkpoint on disk and its bytes, for tests that a refused save leaves it alone."""
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, {"w": np.ones(3, np.float32)} if tree is None else tree)
    return str(path), path.read_bytes()


# ------------------------------------------------------------------------------------ depth


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_a_tree_exactly_max_depth_deep_saves_and_loads(tmp_path, kind):
    tree = _deep_tree(kind, MAX_DEPTH)
    ckptschema.save(tmp_path / "deep.safetensors", tree)
    assert ckptschema.load(tmp_path / "deep.safetensors", template=tree) is not None
    loaded = ckptschema.load(tmp_path / "deep.safetensors")
    for _ in range(MAX_DEPTH):
        loaded = loaded["a"] if kind == "dict" else loaded[0]
    assert loaded.tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_a_tree_one_deeper_than_max_depth_is_refused_by_save_in_one_line(tmp_path, kind):
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(tmp_path / "deep.safetensors", _deep_tree(kind, MAX_DEPTH + 1))
    part = "a" if kind == "dict" else "0"
    assert str(e.value) == "/".join([part] * 8) + "/...: " + DEPTH_ERROR
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_a_manifest_exactly_max_depth_deep_loads(kind):
    loaded = ckptschema.loads(_file_with_manifest(_nested(kind, MAX_DEPTH)))
    for _ in range(MAX_DEPTH):
        loaded = loaded["a"] if kind == "dict" else loaded[0]
    assert loaded is None


@pytest.mark.parametrize("kind", ["dict", "list", "wrapper"])
def test_a_manifest_one_deeper_than_max_depth_is_refused_in_one_line(kind):
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(_file_with_manifest(_nested(kind, MAX_DEPTH + 1)))
    assert str(e.value) == f"<bytes>: invalid manifest: {DEPTH_ERROR}"


def _nested_params(depth: int) -> object:
    import jax.numpy as jnp
    from flax import nnx

    tree: object = jnp.arange(2.0)
    for _ in range(depth):
        tree = nnx.Param(tree)
    return tree


@pytest.mark.framework
def test_nested_wrappers_exactly_max_depth_deep_save_and_load(tmp_path):
    ckptschema.save(tmp_path / "p.safetensors", _nested_params(MAX_DEPTH))
    loaded = ckptschema.load(tmp_path / "p.safetensors")
    for _ in range(MAX_DEPTH):
        loaded = loaded.get_value()
    assert loaded.tolist() == [0.0, 1.0]


@pytest.mark.framework
def test_nested_wrappers_count_towards_max_depth_on_save(tmp_path):
    target = tmp_path / "p.safetensors"
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(target, _nested_params(MAX_DEPTH + 1))
    assert str(e.value) == f"{target}: cannot save: {DEPTH_ERROR}"
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------- ints


@pytest.mark.parametrize("value", [10**MAX_INT_DIGITS - 1, -(10**MAX_INT_DIGITS - 1)], ids=["max", "min"])
def test_ints_of_max_int_digits_round_trip(value):
    assert ckptschema.loads(ckptschema.dumps({"n": value, "keys": {value: 1}})) == {"n": value, "keys": {value: 1}}


@pytest.mark.parametrize(
    "value", [10**MAX_INT_DIGITS, -(10**MAX_INT_DIGITS), 10**5000], ids=["one-over", "one-under", "5001-digits"]
)
def test_an_int_scalar_over_max_int_digits_is_refused_by_save(tmp_path, value):
    path, before = _saved(tmp_path)
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(path, {"step": {"n": value}})
    assert str(e.value) == f"step/n: cannot store {INT_ERROR}"
    assert Path(path).read_bytes() == before


def test_an_int_dict_key_over_max_int_digits_is_refused_by_save():
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.dumps({"ids": {10**MAX_INT_DIGITS: 1.0}})
    assert str(e.value) == f"ids: cannot store {INT_ERROR}"


@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 4301, 100_000])
def test_a_manifest_int_over_max_int_digits_is_refused_on_load(digits):
    data = _file_with_manifest('{"kind":"scalar","type":"int","value":' + "1" * digits + "}")
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(data)
    assert str(e.value) == f"<bytes>: manifest holds {INT_ERROR}"


def test_a_header_int_over_max_int_digits_is_refused():
    data = header_bytes('"w":{"dtype":"U8","shape":[' + "9" * 5000 + '],"data_offsets":[0,0]}', {})
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(data)
    assert str(e.value) == f"<bytes>: header holds {INT_ERROR}"


def test_digits_inside_strings_are_not_integers():
    tree = {"9" * 5000: "1" * 5000}
    assert ckptschema.loads(ckptschema.dumps(tree)) == tree


# ----------------------------------------------------------------------- refused before writing


def test_an_invalid_framework_is_refused_before_the_file_is_touched(tmp_path):
    path, before = _saved(tmp_path)
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(path, {"w": np.zeros(3)}, framework="Not A Framework")
    assert str(e.value) == f"{path}: cannot save: framework: String should match pattern '^[a-z][a-z0-9_.-]{{0,63}}$'"
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert Path(path).read_bytes() == before


@pytest.mark.remote
def test_an_invalid_framework_is_refused_before_a_remote_file_is_created():
    import fsspec

    fs = fsspec.filesystem("memory")
    url = "memory://limits/model.safetensors"
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(url, {"w": np.zeros(3)}, framework="Not A Framework")
    assert str(e.value) == f"{url}: cannot save: framework: String should match pattern '^[a-z][a-z0-9_.-]{{0,63}}$'"
    assert not fs.exists("/limits") or fs.find("/limits") == []


def test_a_header_over_max_header_bytes_is_refused_and_the_old_file_still_loads(tmp_path):
    path, before = _saved(tmp_path)
    key = "k" * 51_000_000  # in the header entry and in its dict node of the manifest: over 100,000,000 bytes
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(path, {key: np.zeros(0, np.float32)})
    assert str(e.value) == (
        f"{path}: cannot save: header of 102000320 bytes exceeds MAX_HEADER_BYTES=100000000{HEADER_HINT}"
    )
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert Path(path).read_bytes() == before
    assert ckptschema.load(path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_sharded_index_over_max_header_bytes_is_refused_and_the_old_checkpoint_still_loads(tmp_path):
    ckptschema.save(tmp_path, {"w": np.ones(3, np.float32)}, max_shard_size="1GB")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(tmp_path, {"k" * 50_000_000: np.zeros(0, np.float32)}, max_shard_size="1GB")
    assert str(e.value).startswith(f"{tmp_path}: cannot save: index of ")
    assert str(e.value).endswith(f" bytes exceeds MAX_HEADER_BYTES=100000000{HEADER_HINT}")
    assert sorted(os.listdir(tmp_path)) == before
    assert ckptschema.load(tmp_path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_manifest_the_reader_would_count_over_max_json_values_is_refused_by_save():
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.dumps({"s": "," * 8_000_000})
    assert str(e.value) == "<bytes>: cannot save: manifest holds more than MAX_JSON_VALUES=4000000 JSON values"


def test_a_header_of_more_than_max_tensors_is_refused_even_without_metadata():
    entries = ",".join(f'"{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(MAX_TENSORS + 1))
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.loads(header_bytes(entries, {}))
    assert str(e.value) == f"<bytes>: header lists more than MAX_TENSORS={MAX_TENSORS} tensors"


@pytest.mark.slow
def test_more_than_max_tensors_are_refused_by_save(tmp_path):
    path, before = _saved(tmp_path)
    quarter = [np.zeros(0, np.uint8)] * (MAX_TENSORS // 4)
    tree = [quarter, quarter, quarter, [*quarter, np.zeros(0, np.uint8)]]
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(path, tree)
    assert str(e.value) == f"{path}: cannot save: {MAX_TENSORS + 1} tensors exceed MAX_TENSORS={MAX_TENSORS}"
    assert Path(path).read_bytes() == before
