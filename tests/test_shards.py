"""Sharded checkpoints: `save(dir, tree, max_shard_size=...)`, an HF-layout index, hostile indexes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import ckptschema
from ckptschema import _tensors
from ckptschema._dtypes import DTYPES
from ckptschema._shards import MAX_OPEN_SHARDS, open_sharded
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


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    directory = _saved(tmp_path)
    before = set(os.listdir(directory))
    # The first shard (100 B) fits under the file size limit, the second (80 KB) does not:
    # the kernel stops the save midway with EFBIG, as a full disk would with ENOSPC.
    script = (
        "import resource, signal, sys, numpy as np, ckptschema\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))\n"
        "tree = {'a': np.ones(100, np.int8), 'b': np.ones(20_000, np.float32)}\n"
        "try:\n"
        "    ckptschema.save(sys.argv[1], tree, max_shard_size='2KB')\n"
        "except ckptschema.CkptSchemaError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory)], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout == f"{directory}: cannot write (File too large)\n"
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


REPO = Path(__file__).resolve().parent.parent

_MANY_SHARDS = """
import resource, sys, numpy as np, ckptschema
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
tree = {f"t{i:04d}": np.full(4, i, np.int32) for i in range(1100)}
ckptschema.save(sys.argv[1], tree, max_shard_size=16)
loaded = ckptschema.load(sys.argv[1], verify=True)
assert all(np.asarray(loaded[k]).tolist() == v.tolist() for k, v in tree.items())
assert ckptschema.validate(sys.argv[1], deep=True).ok
print(len(loaded))
"""


@pytest.mark.slow
def test_checkpoint_of_1100_shards_saves_and_loads_with_256_open_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _MANY_SHARDS, str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1100"
    assert len(list(tmp_path.glob("model-*-of-01100-*.safetensors"))) == 1100


def test_shard_replaced_after_it_was_first_opened_is_refused(tmp_path):
    tree = {f"t{i}": np.full(4, i, np.int32) for i in range(MAX_OPEN_SHARDS + 2)}
    ckptschema.save(tmp_path, tree, max_shard_size=16)
    source, header = open_sharded(tmp_path)
    try:
        first = source.paths[0]
        copy = tmp_path / "copy"
        copy.write_bytes(Path(first).read_bytes())
        os.replace(copy, first)  # same bytes, another file
        with pytest.raises(ckptschema.CheckpointChangedError) as e:
            _tensors.read_tensor(source, header.entries["t0"], DTYPES["int32"], (4,))
    finally:
        source.close()
    assert str(e.value) == (
        f"{first}: the shard was replaced or changed while being loaded; load again once no other process "
        f"writes the checkpoint"
    )


_SHARDED_CHILD = """
import sys, numpy as np, ckptschema
tree = {f"t{i:02d}": np.full((1 << 20,), 2.0, np.float32) for i in range(16)}  # 64 MB in 16 shards
print("go", flush=True)
ckptschema.save(sys.argv[1], tree, max_shard_size="4MB")
print("saved", flush=True)
"""


def _size(path: Path) -> int:
    """The size of a file another process may rename away meanwhile (0 if it is gone)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _start_sharded_save(directory: Path) -> subprocess.Popen:
    """A child running a real sharded save, stopped or killed by the caller once it has renamed two shards
    and is writing data to a third (an empty temporary file younger than a minute is never removed)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SHARDED_CHILD, str(directory)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "go"
    deadline = time.monotonic() + 60
    while len(list(directory.glob("model-*-of-00016-*.safetensors"))) < 2 or not any(
        _size(p) > 0 for p in directory.glob(".model-*-of-00016-*.tmp")
    ):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)
    return child


def test_sharded_save_removes_the_shards_and_temp_files_a_sigkilled_save_left(tmp_path):
    ckptschema.save(tmp_path, _tree(), max_shard_size="2KB")
    child = _start_sharded_save(tmp_path)
    child.kill()
    child.wait()
    child.stdout.close()
    assert len(list(tmp_path.glob("model-*-of-00016-*.safetensors"))) >= 2
    ckptschema.save(tmp_path, _tree(), max_shard_size="2KB")
    index = json.loads((tmp_path / INDEX).read_text())
    assert sorted(os.listdir(tmp_path)) == sorted({INDEX, *index["weight_map"].values()})
    assert_same_tree(ckptschema.load(tmp_path, verify=True), _tree())


def test_sharded_save_keeps_the_shards_of_a_save_still_running_in_another_process(tmp_path):
    child = _start_sharded_save(tmp_path)
    child.send_signal(signal.SIGSTOP)  # holding its first shard's lock and its temp file's
    try:
        running = set(os.listdir(tmp_path))
        ckptschema.save(tmp_path, _tree(), max_shard_size="2KB")
        assert running <= set(os.listdir(tmp_path))
    finally:
        child.send_signal(signal.SIGCONT)
    assert child.communicate(timeout=120)[0].strip() == "saved" and child.returncode == 0
    loaded = ckptschema.load(tmp_path, verify=True)
    assert sorted(loaded) == [f"t{i:02d}" for i in range(16)]


def test_sharded_save_removes_no_shard_while_the_index_cannot_be_read(tmp_path):
    ckptschema.save(tmp_path, _tree(), max_shard_size="2KB")
    before = {p.name for p in tmp_path.glob("model-*.safetensors")}
    (tmp_path / INDEX).write_text("{not json")
    ckptschema.save(tmp_path, _tree(), max_shard_size="2KB")
    assert before <= set(os.listdir(tmp_path))


def test_sharded_checkpoint_gives_back_its_user_metadata(tmp_path):
    tree = {"a": np.zeros(16, np.float32), "b": np.ones(16, np.float32)}
    saved = ckptschema.save(tmp_path / "ckpt", tree, metadata={"run": "7"}, max_shard_size=64)
    assert saved.metadata == {"run": "7"} == ckptschema.read_manifest(tmp_path / "ckpt").metadata


def test_a_batch_of_runs_over_several_shards_reads_each_from_its_shard(tmp_path):
    tree = {"a": np.arange(40, dtype=np.int16), "b": np.arange(50, dtype=np.int32), "c": np.arange(30, dtype=np.int8)}
    ckptschema.save(tmp_path, tree, max_shard_size=100)
    source, header = open_sharded(tmp_path)
    try:
        entries = [header.entries[key] for key in sorted(tree, key=lambda k: header.entries[k].start)]
        assert len({source.locate(entry.start)[0] for entry in entries}) == 3
        runs = [(entry.start + 2, memoryview(bytearray(entry.nbytes - 4))) for entry in entries]
        source.read_runs(runs)
    finally:
        source.close()
    for entry, (_, buffer) in zip(entries, runs):
        assert bytes(buffer) == tree[entry.key].tobytes()[2:-2]
