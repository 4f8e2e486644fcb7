"""Sharded checkpoints: `save(dir, tree, max_shard_size=...)`, an HF-layout index, hostile indexes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import ckptschema
from ckptschema import _storage
from ckptschema.cli import main

from .helpers import assert_same_tree

INDEX = "model.safetensors.index.json"


def _tree() -> dict:
    return {
        "embed": np.arange(1000, dtype=np.float32),  # 4000 B: a shard of its own under a 2 KB limit
        "layers": [{"w": np.ones((10, 10), np.int8), "b": jnp.zeros(300, jnp.bfloat16)}, None],
        "step": 3,
    }


def _jax_ordered(tree: dict) -> dict:
    """The tree with its dict keys in the order JAX gives them (sorted), like a result shaped by `eval_shape`."""
    return jax.tree.map(lambda x: x, tree)


def _template(leaf: object = jax.eval_shape) -> dict:
    """An abstract (or, with np.asarray, numpy) template; the step stays a Python int."""
    template = jax.eval_shape(_tree) if leaf is jax.eval_shape else jax.tree.map(leaf, _tree())  # type: ignore[arg-type]
    return {**template, "step": 0}


def _saved(tmp_path: Path, **kwargs: object) -> Path:
    directory = tmp_path / "ckpt"
    ckptschema.save(directory, _tree(), max_shard_size=kwargs.pop("max_shard_size", "2KB"), **kwargs)
    return directory


def _index(directory: Path) -> dict:
    return json.loads((directory / INDEX).read_text())


def _shards(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != INDEX)


def test_shards_stay_under_the_limit_unless_one_tensor_is_larger(tmp_path):
    directory = _saved(tmp_path)
    sizes = {name: (directory / name).stat().st_size for name in _shards(directory)}
    weight_map = _index(directory)["weight_map"]
    assert len(sizes) == 2 and weight_map["embed"] != weight_map["layers.0.w"] == weight_map["layers.0.b"]
    assert sizes[weight_map["layers.0.w"]] < 2000 < sizes[weight_map["embed"]]


def test_sharded_checkpoint_loads_back_exactly_with_and_without_template(tmp_path):
    directory = _saved(tmp_path)
    assert_same_tree(ckptschema.load(directory), _tree(), same_classes=False)
    assert_same_tree(ckptschema.load(directory, template=_template()), _jax_ordered(_tree()))


def test_the_index_path_works_like_the_directory(tmp_path):
    directory = _saved(tmp_path)
    assert ckptschema.read_manifest(directory / INDEX) == ckptschema.read_manifest(directory)
    assert ckptschema.validate(directory / INDEX, _template(), deep=True).ok


def test_shards_are_plain_safetensors_files_and_the_index_is_hugging_face_layout(tmp_path):
    directory = _saved(tmp_path)
    index = _index(directory)
    assert index["metadata"]["total_size"] == 4000 + 100 + 600
    loaded = {k: v for name in _shards(directory) for k, v in safetensors.numpy.load_file(directory / name).items()}
    assert sorted(loaded) == sorted(index["weight_map"]) == ["embed", "layers.0.b", "layers.0.w"]
    manifest = ckptschema.read_manifest(directory)
    assert json.loads(index["metadata"]["ckptschema"]) == manifest.data


def test_saving_again_replaces_the_shards_and_removes_the_old_ones(tmp_path):
    directory = _saved(tmp_path)
    before = set(_shards(directory))
    ckptschema.save(directory, _tree(), max_shard_size=10**6)
    after = set(_shards(directory))
    assert len(after) == 1 and not after & before
    assert_same_tree(ckptschema.load(directory, template=_template()), _jax_ordered(_tree()))


def test_saving_never_removes_files_an_old_index_names_but_ckptschema_did_not_write(tmp_path):
    directory = _saved(tmp_path)
    (directory / "notes.txt").write_text("keep me")
    _rewrite_index(directory, lambda i: i["weight_map"].__setitem__("extra", "notes.txt"))
    ckptschema.save(directory, _tree(), max_shard_size="2KB")
    assert (directory / "notes.txt").read_text() == "keep me"


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    directory = _saved(tmp_path)
    before = set(os.listdir(directory))
    calls = []
    real = _storage.write_stream

    def fail_on_second_shard(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(_storage, "write_stream", fail_on_second_shard)
    with pytest.raises(ckptschema.CkptSchemaError, match="ckpt: cannot write \\(No space left on device\\)"):
        ckptschema.save(directory, {k: v for k, v in _tree().items()}, max_shard_size="2KB")
    assert set(os.listdir(directory)) == before
    assert ckptschema.validate(directory, deep=True).ok


def test_cli_reads_a_sharded_directory(tmp_path, capsys):
    directory = _saved(tmp_path)
    assert main(["inspect", str(directory)]) == 0
    assert "total: 3 tensors, 1,400 parameters" in capsys.readouterr().out
    assert main(["validate", str(directory), "--deep"]) == 0


def test_sharded_checkpoint_without_manifest_loads_with_a_template(tmp_path):
    directory = tmp_path / "hf"
    directory.mkdir()
    safetensors.numpy.save_file({"a.w": np.ones(2, np.float32)}, directory / "model-00001-of-00002.safetensors")
    safetensors.numpy.save_file({"b": np.zeros(3, np.int32)}, directory / "model-00002-of-00002.safetensors")
    weight_map = {"a.w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": 20}, "weight_map": weight_map}))
    loaded = ckptschema.load(directory, template={"a": {"w": np.zeros(2, np.float32)}, "b": np.zeros(3, np.int32)})
    assert_same_tree(loaded, {"a": {"w": np.ones(2, np.float32)}, "b": np.zeros(3, np.int32)})


def test_max_shard_size_takes_bytes_or_unit_strings_and_refuses_others(tmp_path):
    for bad in ("2XB", "-1", 0, "", True):
        with pytest.raises(ckptschema.CkptSchemaError, match="max_shard_size="):
            ckptschema.save(tmp_path / "x", _tree(), max_shard_size=bad)  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "x")


def test_dumps_refuses_sharding_and_manifest_of_ignores_it():
    with pytest.raises(ckptschema.CkptSchemaError, match="max_shard_size= needs save"):
        ckptschema.dumps(_tree(), max_shard_size="1KB")
    assert ckptschema.manifest_of(_tree(), max_shard_size="1KB") == ckptschema.manifest_of(_tree())


def test_mmap_is_refused_for_sharded_checkpoints(tmp_path):
    directory = _saved(tmp_path)
    with pytest.raises(ckptschema.CkptSchemaError, match="mmap=True is not supported for sharded checkpoints"):
        ckptschema.load(directory, template=_template(np.asarray), mmap=True)


# ------------------------------------------------------------------------- hostile indexes


def _rewrite_index(directory: Path, edit: object) -> None:
    index = _index(directory)
    edit(index)  # type: ignore[operator]
    (directory / INDEX).write_text(json.dumps(index))


def _map_embed_to(name: str) -> object:
    return lambda index: index["weight_map"].__setitem__("embed", name)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("parent", _map_embed_to("../outside.safetensors"), "shards must be plain file names"),
        ("absolute", _map_embed_to("/etc/passwd"), "shards must be plain file names"),
        ("dot-dot", _map_embed_to(".."), "shards must be plain file names"),
        ("nul", _map_embed_to("a\0b.safetensors"), "shards must be plain file names"),
        ("url", _map_embed_to("s3:x.safetensors"), "shards must be plain file names"),
        ("not a string", _map_embed_to(7), "shards must be plain file names"),  # type: ignore[arg-type]
        ("missing shard", _map_embed_to("nope.safetensors"), "shard cannot be opened"),
        ("extra key", lambda index: index.__setitem__("extra", 1), "exactly 'metadata' and 'weight_map'"),
        ("unlisted tensor", lambda index: index["weight_map"].pop("layers.0.b"), "which the index places nowhere"),
        (
            "listed nowhere",
            lambda index: index["weight_map"].__setitem__("ghost", index["weight_map"]["embed"]),
            "'ghost' is not in its shard",
        ),
        (
            "manifest not a string",
            lambda index: index["metadata"].__setitem__("ckptschema", 7),
            "must be the manifest as a JSON string",
        ),
    ],
)
def test_hostile_index_is_a_format_error(tmp_path, name, edit, message):
    directory = _saved(tmp_path)
    _rewrite_index(directory, edit)
    with pytest.raises(ckptschema.FormatError, match=message):
        ckptschema.load(directory)


def test_tensor_listed_in_the_wrong_shard_is_refused(tmp_path):
    directory = _saved(tmp_path)
    weight_map = _index(directory)["weight_map"]
    embed_shard, other = weight_map["embed"], weight_map["layers.0.w"]
    _rewrite_index(directory, lambda i: i["weight_map"].__setitem__("layers.0.b", embed_shard))
    with pytest.raises(
        ckptschema.FormatError, match=f"holds tensor 'layers.0.b', which the index places in shard '{embed_shard}'"
    ):
        ckptschema.load(directory)
    _rewrite_index(directory, lambda i: i["weight_map"].update({"layers.0.b": other, "embed": other}))
    with pytest.raises(ckptschema.FormatError, match=f"tensor 'embed' is not in its shard '{other}'"):
        ckptschema.load(directory)


def test_duplicate_keys_in_the_index_are_refused(tmp_path):
    directory = _saved(tmp_path)
    text = (directory / INDEX).read_text()
    (directory / INDEX).write_text(text.replace('"weight_map": {', '"weight_map": {"embed": "x.safetensors", ', 1))
    with pytest.raises(ckptschema.FormatError, match="index repeats the key 'embed'"):
        ckptschema.read_manifest(directory)


def test_symlinked_and_fifo_shards_are_refused(tmp_path):
    directory = _saved(tmp_path)
    embed = _index(directory)["weight_map"]["embed"]
    os.rename(directory / embed, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", directory / embed)
    with pytest.raises(ckptschema.FormatError, match="a shard must be a regular file"):
        ckptschema.load(directory)
    os.unlink(directory / embed)
    os.mkfifo(directory / embed)
    with pytest.raises(ckptschema.FormatError, match="a shard must be a regular file"):
        ckptschema.load(directory)


def test_a_directory_with_several_indexes_is_ambiguous(tmp_path):
    directory = tmp_path / "two"
    directory.mkdir()
    (directory / "a.safetensors.index.json").write_text("{}")
    (directory / "b.safetensors.index.json").write_text("{}")
    with pytest.raises(ckptschema.FormatError, match="several indexes"):
        ckptschema.read_manifest(directory)
