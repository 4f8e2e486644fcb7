"""fsspec URLs: checkpoints on a real S3 API (moto's server on 127.0.0.1) and in memory://."""

from __future__ import annotations

import secrets

import jax
import numpy as np
import pytest

import ckptschema
from ckptschema import _format, _header, _remote
from ckptschema.cli import main

from .helpers import assert_same_tree

pytestmark = pytest.mark.remote


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "embed": rng.standard_normal((2048, 4096)).astype(np.float32),  # 32 MiB: read in ranges on threads
        "head": {"w": np.arange(12, dtype=np.int16).reshape(3, 4), "b": np.ones(4, np.float32)},
        "step": 10,
    }


def test_s3_round_trip_is_exact_with_and_without_template(bucket):
    url = f"{bucket}/model.safetensors"
    manifest = ckptschema.save(url, _tree())
    assert ckptschema.read_manifest(url) == manifest
    assert_same_tree(ckptschema.load(url), _tree())
    assert_same_tree(ckptschema.load(url, template=_tree()), _tree())
    assert ckptschema.validate(url, deep=True).ok


def test_cli_inspects_and_validates_an_s3_checkpoint(bucket, capsys):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    assert main(["inspect", url]) == 0
    assert "total: 3 tensors, 8,388,624 parameters" in capsys.readouterr().out
    assert main(["validate", url, "--deep"]) == 0


def test_a_subtree_from_s3_reads_only_the_header_and_its_bytes(bucket, monkeypatch):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    header_bytes = _header.read_header(_remote.RemoteSource(url)).data_start
    reads: list[int] = []
    read_runs = _remote.RemoteSource.read_runs  # every read goes through it (read_into too)

    def counting(self: _remote.RemoteSource, runs: list[tuple[int, memoryview]]) -> None:
        reads.extend(buffer.nbytes for _, buffer in runs)
        read_runs(self, runs)

    monkeypatch.setattr(_remote.RemoteSource, "read_runs", counting)
    head = ckptschema.load(url, template=_tree()["head"], subtree="head")
    assert_same_tree(head, _tree()["head"])
    assert sum(reads) == header_bytes + 12 * 2 + 4 * 4  # of the 32 MiB file: its header and 40 bytes


def test_a_missing_object_is_a_format_error(bucket, capsys):
    with pytest.raises(ckptschema.FormatError, match=r"/nope\.safetensors: cannot open \(no such object\)"):
        ckptschema.load(f"{bucket}/nope.safetensors")
    assert main(["inspect", f"{bucket}/nope.safetensors"]) == 2


def test_a_failed_s3_save_leaves_the_previous_object(bucket, monkeypatch):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    calls = []
    real = _format.as_bytes

    def fail_on_second_tensor(array: np.ndarray) -> memoryview:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(5, "connection reset")
        return real(array)

    monkeypatch.setattr(_format, "as_bytes", fail_on_second_tensor)
    with pytest.raises(ckptschema.CkptSchemaError, match="cannot write"):
        ckptschema.save(url, {**_tree(), "step": 11}, checksum=None)
    monkeypatch.undo()
    assert ckptschema.load(url)["step"] == 10 and ckptschema.validate(url, deep=True).ok


def test_memory_urls_round_trip_and_a_failed_save_keeps_the_old_object(monkeypatch):
    import fsspec

    url = f"memory://ckpt-{secrets.token_hex(4)}/model.safetensors"
    ckptschema.save(url, {"w": np.arange(3, dtype=np.float32)})
    monkeypatch.setattr(_format, "as_bytes", lambda array: (_ for _ in ()).throw(OSError(5, "gone")))
    with pytest.raises(ckptschema.CkptSchemaError, match="cannot write"):
        ckptschema.save(url, {"w": np.zeros(3, np.float32)})
    monkeypatch.undo()
    assert ckptschema.load(url)["w"].tolist() == [0, 1, 2]
    assert fsspec.filesystem("memory").ls(url.rsplit("/", 1)[0].removeprefix("memory://"), detail=False) == [
        url.removeprefix("memory:/")
    ]


def test_an_unknown_protocol_is_a_format_error():
    with pytest.raises(ckptschema.FormatError, match=r"^nosuch://x\.safetensors: .*nosuch"):
        ckptschema.read_manifest("nosuch://x.safetensors")


def test_a_missing_object_is_a_file_not_found_error(bucket):
    url = f"{bucket}/none.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        ckptschema.load(url)
    assert isinstance(e.value, ckptschema.CkptSchemaError)
    assert (str(e.value), e.value.filename) == (f"{url}: cannot open (no such object)", url)


def test_mmap_needs_a_local_file(bucket):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    with pytest.raises(ckptschema.CkptSchemaError, match="mmap=True needs a local file"):
        ckptschema.load(url, template=_tree(), mmap=True)


def test_template_load_places_leaves_like_a_local_load(bucket):
    url = f"{bucket}/model.safetensors"
    ckptschema.save(url, _tree())
    arrays = jax.eval_shape(lambda: {k: v for k, v in _tree().items() if k != "step"})
    loaded = ckptschema.load(url, template={**arrays, "step": 0})
    assert isinstance(loaded["embed"], jax.Array) and not loaded["embed"].committed
