"""Sharded checkpoints behind URLs: an HF-layout directory on S3 (moto's server on 127.0.0.1) reads like a local one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import ckptschema
from ckptschema import _remote, _tensors
from ckptschema.cli import main

from .helpers import assert_same_tree

pytestmark = pytest.mark.remote

INDEX = "model.safetensors.index.json"


def _tree(step: int = 3) -> dict:
    return {
        "embed": np.arange(1000, dtype=np.float32) + step,  # 4000 B: a shard of its own under a 2 KB limit
        "layers": [{"w": np.full((10, 10), step, np.int8), "b": np.ones(300, np.float16)}, None],
        "step": step,
    }


def _fs():
    import fsspec

    return fsspec.filesystem("s3")


def _upload(directory: Path, url: str, *, index_last: bool = True) -> None:
    """Put a local sharded checkpoint's files under `url`, the index last (as a save commits)."""
    names = sorted(os.listdir(directory), key=lambda name: name == INDEX and index_last)
    for name in names:
        _fs().put(str(directory / name), f"{url}/{name}")


def _saved(tmp_path: Path, url: str, step: int = 3, name: str = "ckpt") -> Path:
    directory = tmp_path / name
    ckptschema.save(directory, _tree(step), max_shard_size="2KB", metadata={"run": "a"})
    _upload(directory, url)
    return directory


def _forms(url: str) -> list[str]:
    return [url, f"{url}/", f"{url}/{INDEX}"]


def test_a_directory_and_its_index_url_load_exactly_like_the_local_checkpoint(tmp_path, bucket):
    url = f"{bucket}/run/step-100"
    local = _saved(tmp_path, url)
    template = {**jax.eval_shape(lambda: _tree()), "step": 0}
    for where in _forms(url):
        assert_same_tree(ckptschema.load(where), ckptschema.load(local))
        checked = ckptschema.load(where, template=template, verify=True)
        assert_same_tree(checked, ckptschema.load(local, template=template))
        assert_same_tree(ckptschema.load(where, subtree="layers"), ckptschema.load(local, subtree="layers"))
        assert ckptschema.read_manifest(where) == ckptschema.read_manifest(local)
        assert ckptschema.read_manifest(where).metadata == {"run": "a"}


def test_validate_of_a_remote_sharded_checkpoint_reports_what_the_local_one_does(tmp_path, bucket):
    url = f"{bucket}/run/step-100"
    local = _saved(tmp_path, url)
    wrong = {**_tree(), "embed": np.zeros(3, np.float32)}
    for where in _forms(url):
        assert ckptschema.validate(where, deep=True).ok
        report = ckptschema.validate(where, wrong)
        assert (report.ok, report.issues) == (False, ckptschema.validate(local, wrong).issues)
        assert report.source == f"{url}/{INDEX}"


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


def test_cli_inspects_and_validates_a_remote_sharded_checkpoint_like_a_local_one(tmp_path, bucket, capsys):
    url = f"{bucket}/run/step-100"
    local = str(_saved(tmp_path, url))
    for where, local_where in zip(_forms(url), _forms(local)):
        for command in (["inspect"], ["inspect", "--json"], ["validate", "--deep"], ["validate", "--json"]):
            code, out = _cli([command[0], where, *command[1:]], capsys)
            local_code, local_out = _cli([command[0], local_where, *command[1:]], capsys)
            out = out.replace(f"{url}/{INDEX}", "<index>").replace(where, "<arg>")
            local_out = local_out.replace(f"{local}/{INDEX}", "<index>").replace(local_where, "<arg>")
            assert (code, out) == (0, local_out) and local_code == 0


def test_a_directory_url_without_an_index_is_not_found(tmp_path, bucket):
    url = f"{bucket}/run/step-100"
    directory = _saved(tmp_path, url)
    _fs().rm(f"{url}/{INDEX}")
    for where in (url, f"{url}/"):
        with pytest.raises(ckptschema.CheckpointNotFoundError) as e:
            ckptschema.load(where)
        assert str(e.value) == (
            f"{url}: a directory is read as a sharded checkpoint, but it has no *.safetensors.index.json index"
        )
        assert e.value.filename == url and isinstance(e.value, FileNotFoundError)
    assert main(["inspect", url]) == 2
    assert os.path.exists(directory / INDEX)


def test_a_missing_index_url_and_a_missing_directory_url_are_not_found(bucket):
    with pytest.raises(ckptschema.CheckpointNotFoundError, match=r"/nope/model\.safetensors\.index\.json: cannot open"):
        ckptschema.read_manifest(f"{bucket}/nope/{INDEX}")
    with pytest.raises(ckptschema.CheckpointNotFoundError, match=r"no \*\.safetensors\.index\.json index"):
        ckptschema.read_manifest(f"{bucket}/nope/")
    with pytest.raises(ckptschema.CheckpointNotFoundError, match="cannot open \\(no such object\\)"):
        ckptschema.read_manifest(f"{bucket}/nope")


def test_a_plain_file_url_still_loads_as_one_file(bucket):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    assert_same_tree(ckptschema.load(url), _tree())


def test_mmap_on_a_remote_sharded_checkpoint_is_refused_clearly(tmp_path, bucket):
    url = f"{bucket}/run"
    _saved(tmp_path, url)
    template = {**jax.tree.map(np.asarray, _tree()), "step": 0}
    with pytest.raises(ckptschema.CkptSchemaError, match="mmap=True is not supported for sharded checkpoints"):
        ckptschema.load(url, template=template, mmap=True)


def _edited_index(local: Path, url: str, edit) -> None:
    index = json.loads((local / INDEX).read_text())
    edit(index)
    _fs().pipe(f"{url}/{INDEX}", json.dumps(index).encode())


def _map_embed_to(name: object):
    return lambda index: index["weight_map"].__setitem__("embed", name)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_map_embed_to("../outside.safetensors"), "shards must be plain file names"),
        (_map_embed_to("/etc/passwd"), "shards must be plain file names"),
        (_map_embed_to(".."), "shards must be plain file names"),
        (_map_embed_to("s3://other/x.safetensors"), "shards must be plain file names"),
        (_map_embed_to("x.safetensors?versionId=1"), "shards must be plain file names"),
        (_map_embed_to("x.safetensors#1"), "shards must be plain file names"),
        (_map_embed_to("nope.safetensors"), r"/run/nope\.safetensors: cannot open \(no such object\)"),
        (lambda index: index.__setitem__("extra", 1), "exactly 'metadata' and 'weight_map'"),
        (lambda index: index["weight_map"].pop("layers.0.b"), "which the index places nowhere"),
    ],
)
def test_a_hostile_remote_index_is_refused_like_a_local_one(tmp_path, bucket, edit, message):
    url = f"{bucket}/run"
    local = _saved(tmp_path, url)
    _edited_index(local, url, edit)
    with pytest.raises(ckptschema.FormatError, match=message):
        ckptschema.load(url)


def test_a_remote_tensor_listed_in_the_wrong_shard_is_refused_naming_the_shard(tmp_path, bucket):
    url = f"{bucket}/run"
    local = _saved(tmp_path, url)
    weight_map = json.loads((local / INDEX).read_text())["weight_map"]
    embed_shard, other = weight_map["embed"], weight_map["layers.0.w"]
    _edited_index(local, url, lambda index: index["weight_map"].__setitem__("layers.0.b", embed_shard))
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.load(url)
    assert str(e.value) == f"{url}/{other}: holds tensor 'layers.0.b', which the index places in shard '{embed_shard}'"


def test_a_remote_index_larger_than_max_header_bytes_is_refused_before_it_is_read(bucket, monkeypatch):
    from ckptschema import _limits

    url = f"{bucket}/big"
    _fs().pipe(f"{url}/{INDEX}", b"{" + b" " * 2048 + b"}")
    monkeypatch.setattr(_limits, "MAX_HEADER_BYTES", 1024)
    reads: list[int] = []
    monkeypatch.setattr(_remote.RemoteSource, "read_into", lambda self, offset, buffer: reads.append(offset))
    with pytest.raises(ckptschema.FormatError, match="MAX_HEADER_BYTES"):
        ckptschema.read_manifest(url)
    assert reads == []


def test_a_remote_checkpoint_saved_again_between_opening_and_reading_is_read_again_whole(tmp_path, bucket, monkeypatch):
    url = f"{bucket}/run"
    old = _saved(tmp_path, url, step=1, name="v1")
    new = tmp_path / "v2"
    ckptschema.save(new, _tree(2), max_shard_size="2KB")
    calls: list[int] = []
    real = _tensors.read_tensors

    def reading(source, wanted):
        calls.append(1)
        if len(calls) == 1:  # another host saves step 2: its shards, its index, then the old shards go
            _upload(new, url)
            for name in os.listdir(old):
                if name != INDEX:
                    _fs().rm(f"{url}/{name}")
        return real(source, wanted)

    monkeypatch.setattr(_tensors, "read_tensors", reading)
    assert_same_tree(ckptschema.load(url, verify=True), _tree(2), same_classes=False)
    assert len(calls) == 2


def test_a_remote_object_that_changed_under_a_load_is_read_again(bucket, monkeypatch):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    real = _remote.RemoteSource.read_into
    raised: list[str] = []

    def changing_once(self, offset, buffer):
        if not raised and offset > 0:
            raised.append(self.name)
            raise ckptschema.CheckpointChangedError(f"{self.name}: replaced while being read")
        real(self, offset, buffer)

    monkeypatch.setattr(_remote.RemoteSource, "read_into", changing_once)
    assert_same_tree(ckptschema.load(url), _tree(), same_classes=False)
    assert raised == [url]


def test_cli_beside_on_a_url_says_to_name_the_schema_instead(tmp_path, bucket, capsys):
    url = f"{bucket}/run"
    _saved(tmp_path, url)
    for argv in (["schema", url, "--beside"], ["validate", url, "--beside"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"ckptschema: error: {url}: --beside keeps a schema next to a local checkpoint; for a URL use "
            f"'schema {url} -o OUT' and 'validate {url} --schema OUT'\n"
        )
    out = tmp_path / "run.schema.json"
    assert main(["schema", url, "-o", str(out)]) == 0
    assert main(["validate", url, "--schema", str(out)]) == 0


def test_a_sharded_checkpoint_in_memory_urls_loads_like_one_on_s3(tmp_path):
    import secrets

    import fsspec

    local = tmp_path / "ckpt"
    ckptschema.save(local, _tree(), max_shard_size="2KB")
    url = f"memory://ckpt-{secrets.token_hex(4)}/run"
    for name in sorted(os.listdir(local), key=lambda name: name == INDEX):
        fsspec.filesystem("memory").put(str(local / name), f"{url}/{name}")
    assert_same_tree(ckptschema.load(url), ckptschema.load(local))
    assert ckptschema.read_manifest(f"{url}/{INDEX}") == ckptschema.read_manifest(local)


# Sharded saves to object storage


def _objects(url: str) -> list[str]:
    return _remote.listdir(url)


def test_a_sharded_save_to_a_bucket_writes_the_objects_a_local_sharded_save_writes(tmp_path, bucket):
    url = f"{bucket}/run/step-100"
    manifest = ckptschema.save(url, _tree(), max_shard_size="2KB", metadata={"run": "a"})
    local = tmp_path / "local"
    assert manifest == ckptschema.save(local, _tree(), max_shard_size="2KB", metadata={"run": "a"})
    shards = sorted(p.name for p in local.glob("model-*"))
    remote = [name for name in _objects(url) if name != INDEX]
    assert len(remote) == len(shards) > 1
    import fsspec

    fs = fsspec.filesystem("s3")
    key = url.removeprefix("s3://")
    for mine, theirs in zip(sorted(remote), shards):
        assert fs.cat_file(f"{key}/{mine}") == (local / theirs).read_bytes()
    index = json.loads(fs.cat_file(f"{key}/{INDEX}"))
    assert index["metadata"] == json.loads((local / INDEX).read_text())["metadata"]
    assert_same_tree(ckptschema.load(url, verify=True), ckptschema.load(local))


def test_a_sharded_save_to_a_bucket_replaces_the_previous_one_and_removes_its_shards(bucket):
    url = f"{bucket}/run"
    ckptschema.save(url, _tree(step=1), max_shard_size="2KB")
    first = set(_objects(url))
    ckptschema.save(url, _tree(step=2), max_shard_size="2KB")
    second = set(_objects(url))
    assert first & second == {INDEX}
    assert ckptschema.load(url)["step"] == 2
