"""Saves and loads across processes: 2 and 4 processes of JAX's multi-controller runtime on 127.0.0.1.

Each test starts real processes (`tests/multihost.py`), each with its coordinator client,
two CPU devices and its own blocks of the tree, and checks what they wrote or read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptschema

from . import multihost
from .helpers import assert_same_tree

WORKER = Path(__file__).with_name("multihost.py")


def run(scenario: str, count: int, directory: Path | str, timeout: float = 120, **env: str) -> list[dict | None]:
    """Run `scenario` in `count` processes; each one's result, or None for a process that a signal ended.

    A process ends by a signal when it is killed, and when JAX's runtime aborts it because
    the process holding the coordinator died.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent), "JAX_PLATFORMS": "cpu", **env}
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(i), str(count), str(port), str(directory)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    results: list[dict | None] = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if process.returncode in (-signal.SIGKILL, -signal.SIGABRT):
                results.append(None)
            else:
                assert lines, f"a process printed no result (exit {process.returncode}):\n{err[-3000:]}"
                results.append(json.loads(lines[-1]))
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    return results


def whole_tree(step: int = 7, scale: int = 1) -> dict:
    """What the processes save, as one process holding all of it."""
    return {**multihost.global_values(scale), "host_numpy": np.arange(10, dtype=np.int16), "step": step}


def shard_bytes(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(directory.glob("model-*.safetensors"))]


def index_bytes(directory: Path) -> int:
    return (directory / "model.safetensors.index.json").stat().st_size


def header_bytes(shard: Path) -> int:
    with shard.open("rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def index_metadata(directory: Path) -> dict:
    return json.loads((directory / "model.safetensors.index.json").read_text())["metadata"]


@pytest.mark.parametrize("count", [2, 4])
def test_a_tree_spanning_processes_saves_the_files_one_process_would_write(tmp_path, count):
    results = run("save", count, tmp_path / "multi")
    assert all("ok" in r for r in results), results
    ckptschema.save(tmp_path / "single", whole_tree(), max_shard_size="20KB")
    assert shard_bytes(tmp_path / "multi") == shard_bytes(tmp_path / "single")
    assert index_metadata(tmp_path / "multi") == index_metadata(tmp_path / "single")
    expected = ckptschema.manifest_of(whole_tree())
    assert all(r["ok"]["digests"] == {k: t.digest for k, t in expected.tensors.items()} for r in results)
    assert_same_tree(ckptschema.load(tmp_path / "multi", verify=True), ckptschema.load(tmp_path / "single"))


def test_each_process_saves_holding_no_more_than_its_own_share_and_a_bounded_buffer(tmp_path):
    results = run("save", 2, tmp_path / "ckpt", SCALE="512", SHARD_SIZE="4MB")
    for r in results:
        own, growth = r["ok"]["own"], r["ok"]["rss_growth"]
        assert own > 8 << 20
        assert growth <= 0.1 * own + (8 << 20), (growth, own)


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("verify", ["0", "1"])
def test_each_process_loads_its_own_blocks_reading_only_its_own_bytes(tmp_path, count, verify):
    ckptschema.save(tmp_path / "ckpt", whole_tree(scale=64), max_shard_size="1MB")
    headers = index_bytes(tmp_path / "ckpt") + sum(map(header_bytes, (tmp_path / "ckpt").glob("model-*")))
    results = run("load", count, tmp_path / "ckpt", SCALE="64", VERIFY=verify)
    for r in results:
        assert "ok" in r, r
        assert r["ok"]["step"] == 7
        if verify == "0":
            assert r["ok"]["own"] <= r["ok"]["read"] <= 1.1 * r["ok"]["own"] + headers, r


def test_a_load_without_template_gives_every_process_the_whole_tree_on_its_own_device(tmp_path):
    ckptschema.save(tmp_path / "ckpt", whole_tree(), max_shard_size="20KB")
    assert run("load_without_template", 2, tmp_path / "ckpt") == [{"ok": {"step": 7}}] * 2


@pytest.mark.remote
def test_each_process_loads_its_own_blocks_from_a_bucket_asking_only_for_its_own_bytes(tmp_path, bucket, s3_endpoint):
    url = f"{bucket}/run/step-100"
    ckptschema.save(url, whole_tree(scale=64), max_shard_size="1MB")
    ckptschema.save(tmp_path / "ckpt", whole_tree(scale=64), max_shard_size="1MB")
    headers = index_bytes(tmp_path / "ckpt") + sum(map(header_bytes, (tmp_path / "ckpt").glob("model-*")))
    results = run("load", 2, url, SCALE="64", FSSPEC_S3_ENDPOINT_URL=s3_endpoint)
    for r in results:
        assert "ok" in r, r
        assert r["ok"]["step"] == 7
        assert r["ok"]["own"] <= r["ok"]["read"] <= 1.1 * r["ok"]["own"] + headers, r


#: A tree of 12 MiB tensors in 30 MB shards: ranges of one process long enough to be copied by the store,
#: and column splits whose short ranges are sent as data parts.
BUCKET_SAVE = {"SCALE": "1024", "SHARD_SIZE": "30MB"}


def objects(url: str) -> dict[str, bytes]:
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    root = url.removeprefix("s3://")
    return {path.removeprefix(root + "/"): fs.cat_file(path) for path in fs.find(root)}


def index_metadata_of(found: dict[str, bytes]) -> dict:
    return json.loads(found["model.safetensors.index.json"])["metadata"]


def incomplete_uploads(bucket: str, endpoint: str) -> list:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    return client.list_multipart_uploads(Bucket=bucket.removeprefix("s3://")).get("Uploads", [])


@pytest.mark.remote
def test_a_tree_spanning_processes_saves_to_a_bucket_the_objects_one_process_would_write(bucket, s3_endpoint):
    results = run("save", 2, f"{bucket}/multi", FSSPEC_S3_ENDPOINT_URL=s3_endpoint, **BUCKET_SAVE)
    assert all("ok" in r for r in results), results
    whole = whole_tree(scale=1024)
    ckptschema.save(f"{bucket}/single", whole, max_shard_size="30MB")
    multi, single = objects(f"{bucket}/multi"), objects(f"{bucket}/single")
    assert len(multi) == len(single) == 4  # the index and 3 shards, no staging object left
    assert [multi[k] for k in sorted(multi)][:-1] == [single[k] for k in sorted(single)][:-1]  # the shards
    assert json.loads(multi["model.safetensors.index.json"])["metadata"] == index_metadata_of(single)
    expected = {k: t.digest for k, t in ckptschema.manifest_of(whole).tensors.items()}
    assert all(r["ok"]["digests"] == expected for r in results)
    assert_same_tree(ckptschema.load(f"{bucket}/multi", verify=True), whole)
    assert incomplete_uploads(bucket, s3_endpoint) == []


@pytest.mark.remote
@pytest.mark.parametrize("refused", ["put_object", "upload_part_copy"])
def test_a_bucket_save_failing_in_one_process_fails_in_every_process_and_leaves_only_the_old(
    bucket, s3_endpoint, refused
):
    url = f"{bucket}/ckpt"
    ckptschema.save(url, whole_tree(step=1), max_shard_size="20KB")
    before = objects(url)
    results = run("fails_in_one_bucket", 2, url, FSSPEC_S3_ENDPOINT_URL=s3_endpoint, FAIL_CALL=refused, **BUCKET_SAVE)
    assert [r["error"] for r in results] == ["CkptSchemaError", "CkptSchemaError"]
    assert results[0]["message"].startswith(f"{url}: the save failed in process 1 of 2: {url}/")
    assert results[1]["message"].endswith(f"(OSError: {refused} refused)")
    assert objects(url) == before
    assert incomplete_uploads(bucket, s3_endpoint) == []
    assert ckptschema.load(url)["step"] == 1


@pytest.mark.parametrize("victim", [0, 1])
def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, victim):
    ckptschema.save(tmp_path / "ckpt", whole_tree(step=1), max_shard_size="20KB")
    before = shard_bytes(tmp_path / "ckpt")
    results = run("kill_mid_save", 2, tmp_path / "ckpt", VICTIM=str(victim), CKPTSCHEMA_BARRIER_TIMEOUT="30")
    assert results[victim] is None  # the others fail at the next step, or are aborted by JAX's runtime
    assert all(r is None or r["error"] == "CkptSchemaError" for r in results)
    ckptschema.validate(tmp_path / "ckpt", deep=True)
    assert ckptschema.load(tmp_path / "ckpt")["step"] == 1
    ckptschema.save(tmp_path / "ckpt", whole_tree(step=2), max_shard_size="20KB")  # removes what the killed save left
    assert len(shard_bytes(tmp_path / "ckpt")) == len(before)
    assert ckptschema.load(tmp_path / "ckpt")["step"] == 2


def test_processes_saving_different_trees_all_raise_before_writing(tmp_path):
    results = run("different_trees", 2, tmp_path / "ckpt")
    assert [r["error"] for r in results] == ["CkptSchemaError", "CkptSchemaError"]
    assert results[0]["message"] == (
        f"{tmp_path / 'ckpt'}: the processes do not save the same checkpoint (process 1 has another path, tree "
        f"structure, shapes, dtypes, shardings or options than process 0); call save with the same arguments in "
        f"every process"
    )
    assert not (tmp_path / "ckpt").exists()


def test_a_write_failing_in_one_process_fails_the_save_in_every_process_and_keeps_the_old(tmp_path):
    ckptschema.save(tmp_path / "ckpt", whole_tree(step=1), max_shard_size="20KB")
    before = shard_bytes(tmp_path / "ckpt")
    results = run("fails_in_one", 2, tmp_path / "ckpt")
    assert results[0] == {
        "error": "CkptSchemaError",
        "message": f"{tmp_path / 'ckpt'}: the save failed in process 1 of 2: OSError: [Errno 27] File too large",
    }
    assert results[1] == {"error": "CkptSchemaError", "message": f"{tmp_path / 'ckpt'}: cannot write (File too large)"}
    assert shard_bytes(tmp_path / "ckpt") == before
    assert ckptschema.load(tmp_path / "ckpt")["step"] == 1


def test_a_tree_spanning_processes_is_refused_for_a_single_file_or_dumps(tmp_path):
    results = run("refusals", 2, tmp_path)
    assert {k: v for k, v in results[0]["ok"].items() if k != "url"} == {
        "file": (
            f"{tmp_path / 'model.safetensors'}: a tree whose arrays span processes is saved as a sharded checkpoint "
            f"directory (the Hugging Face layout); give a directory path, not a .safetensors file"
        ),
        "dumps": (
            "dumps needs every tensor's bytes in this process, but the tree has arrays that span processes; save "
            "it with ckptschema.save(directory, tree) called in every process"
        ),
    }


@pytest.mark.remote
def test_a_tree_spanning_processes_is_refused_for_object_storage_other_than_s3(tmp_path):
    results = run("refusals", 2, tmp_path)
    assert results[0]["ok"]["url"] == (
        "memory://bucket/ckpt: a tree whose arrays span processes is saved to object storage only on S3 "
        "(s3://): each process uploads its own bytes and the store composes the shards from them "
        "(UploadPartCopy), which MemoryFileSystem does not offer; save to an s3:// URL or to a directory on a "
        "file system every process shares"
    )
