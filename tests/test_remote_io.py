"""Remote I/O: pinned reads, concurrency, deadlines and clean uploads, on moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import ckptschema
from ckptschema import _header, _remote, _s3

pytestmark = pytest.mark.remote

MiB = 1 << 20


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    """An S3 API on 127.0.0.1 for this module, with fsspec configured to use it."""
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}"}
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield host, port
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(moto: tuple[str, int]) -> str:
    import fsspec

    name = f"ckpt-{secrets.token_hex(4)}"
    fsspec.filesystem("s3").mkdir(name)
    return name


def _s3fs():  # the filesystem configured for moto itself, not through a proxy
    import fsspec

    return fsspec.filesystem("s3")


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server that watches the requests going through.

    A connection is *busy* from the first byte of a request until the first byte of its
    answer; `peak` is the most connections busy at once (a lower bound on requests in
    flight). `reject_parts_after` answers the part uploads after that many with 403
    AccessDenied; `stall` makes it accept and read but never answer; `delay_parts` holds
    each part upload's answer back that many seconds.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.busy = self.peak = self.requests = self.parts = 0
        self.reject_parts_after: int | None = None
        self.stall = False
        self.delay_parts = 0.0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        state = {"busy": False}

        def mark(busy: bool) -> None:
            with self.lock:
                if state["busy"] != busy:
                    state["busy"] = busy
                    self.busy += 1 if busy else -1
                    self.peak = max(self.peak, self.busy)

        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(1 << 16):
                    mark(False)
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        threading.Thread(target=answers, daemon=True).start()
        try:
            while data := client.recv(1 << 16):
                if self.stall:
                    continue  # read, never answer
                if not state["busy"]:
                    mark(True)
                    with self.lock:
                        self.requests += 1
                    if b"partNumber=" in data.split(b"\r\n", 1)[0]:
                        with self.lock:
                            self.parts += 1
                            reject = self.reject_parts_after is not None and self.parts > self.reject_parts_after
                        if reject:
                            self._reject(client, data)
                            return
                        if self.delay_parts:
                            time.sleep(self.delay_parts)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            mark(False)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    @staticmethod
    def _reject(client: socket.socket, data: bytes) -> None:
        """Read the request's body (unless it waits for a 100 Continue), answer 403 AccessDenied, close."""
        while b"\r\n\r\n" not in data:
            more = client.recv(1 << 16)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        waits = re.search(rb"(?i)\r\nexpect:\s*100-continue", head)  # the body comes only after a 100
        length = int(found.group(1)) if found and not waits else 0
        while len(body) < length:
            more = client.recv(1 << 20)
            if not more:
                return
            body += more
        error = b"<Error><Code>AccessDenied</Code><Message>denied by the test proxy</Message></Error>"
        client.sendall(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            + f"Content-Length: {len(error)}\r\n\r\n".encode()
            + error
        )
        client.close()


@pytest.fixture
def proxy(moto: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """A `Proxy` in front of moto, and fsspec's S3 endpoint pointed at it for this test."""
    import fsspec
    import s3fs

    through = Proxy(moto)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": through.url})
    s3fs.S3FileSystem.clear_instance_cache()
    yield through
    through.close()
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def _uploads(bucket: str) -> list[dict]:
    return _s3fs().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def _tree(n_bytes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.integers(0, 255, n_bytes, dtype=np.uint8), "step": seed}


@pytest.fixture
def dead_server() -> Iterator[str]:
    """An endpoint on 127.0.0.1 that accepts connections and reads requests but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def _no_answer(url: str, doing: str, seconds: int = 2) -> str:
    return (
        f"{url}: {doing} (no answer from the store within {seconds} s; is it running and reachable? "
        f"for a slow one raise CKPTSCHEMA_REMOTE_TIMEOUT)"
    )


# Pinned reads


def test_an_overwrite_after_opening_raises_checkpoint_changed_instead_of_mixing_versions(bucket):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000, seed=1))
    source = _remote.RemoteSource(url)
    data_start = _header.read_header(source).data_start
    etag = _s3fs().info(f"{bucket}/model.safetensors")["ETag"]
    ckptschema.save(url, _tree(1000, seed=2))
    buffer = bytearray(1000)
    with pytest.raises(ckptschema.CheckpointChangedError) as e:
        source.read_into(data_start, memoryview(buffer))
    assert str(e.value) == (
        f"{url}: the object was replaced while being read (opened as ETag {etag}; found another version); "
        f"nothing read from it is used: load it again"
    )
    assert buffer == bytearray(1000)


def test_a_versioned_bucket_keeps_reading_the_version_opened_after_an_overwrite(bucket):
    _s3fs().call_s3("put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000, seed=1))
    source = _remote.RemoteSource(url)
    data_start = _header.read_header(source).data_start
    ckptschema.save(url, _tree(1000, seed=2))
    buffer = bytearray(1000)
    source.read_into(data_start, memoryview(buffer))
    assert bytes(buffer) == _tree(1000, seed=1)["w"].tobytes()
    assert "VersionId" in source.version


def test_a_load_overlapping_an_overwrite_never_mixes_versions_nor_calls_the_file_corrupt(bucket, monkeypatch):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(4 * MiB, seed=1))
    real = _remote.RemoteSource.read_runs
    calls = []

    def overwrite_after_the_header(self: _remote.RemoteSource, runs) -> None:
        calls.append(1)
        if len(calls) == 3:  # the prefix and the header are read; the tensors are next
            ckptschema.save(url, _tree(4 * MiB, seed=2))
        real(self, runs)

    monkeypatch.setattr(_remote.RemoteSource, "read_runs", overwrite_after_the_header)
    try:
        loaded = ckptschema.load(url, verify=True)
    except ckptschema.CheckpointChangedError as e:  # raised here; a load that starts over gets the new version
        assert str(e).startswith(f"{url}: the object was replaced while being read")
    else:
        assert loaded["step"] == 2 and np.array_equal(np.asarray(loaded["w"]), _tree(4 * MiB, seed=2)["w"])
    assert len(calls) >= 3


def test_a_store_without_pinned_reads_detects_an_overwrite_after_reading(monkeypatch):
    url = f"memory://ckpt-{secrets.token_hex(4)}/model.safetensors"
    ckptschema.save(url, _tree(1000, seed=1))
    source = _remote.RemoteSource(url)
    data_start = _header.read_header(source).data_start
    time.sleep(0.001)
    ckptschema.save(url, _tree(1000, seed=2))
    changed = r"the object was replaced while being read \(opened as size "
    with pytest.raises(ckptschema.CheckpointChangedError, match=changed):
        source.read_into(data_start, memoryview(bytearray(1000)))


# Deadlines


def test_a_server_that_never_answers_fails_the_open_within_the_deadline(moto, dead_server, monkeypatch):
    import fsspec
    import s3fs

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": dead_server})
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_TIMEOUT", "2")
    s3fs.S3FileSystem.clear_instance_cache()
    url = "s3://stopped/model.safetensors"
    started = time.monotonic()
    with pytest.raises(ckptschema.FormatError) as e:
        ckptschema.load(url)
    assert str(e.value) == _no_answer(url, "cannot open")
    assert time.monotonic() - started < 8
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_store_that_stops_answering_mid_read_fails_within_the_deadline(bucket, proxy, monkeypatch):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000))
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_TIMEOUT", "2")
    source = _remote.RemoteSource(url)
    proxy.stall = True
    started = time.monotonic()
    with pytest.raises(ckptschema.FormatError) as e:
        source.read_into(0, memoryview(bytearray(8)))
    assert str(e.value) == _no_answer(url, "read failed at byte 0")
    assert time.monotonic() - started < 8


def test_a_save_to_a_store_that_stops_answering_fails_within_the_deadline_and_keeps_the_old_object(
    bucket, proxy, monkeypatch
):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000, seed=1))
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_TIMEOUT", "2")
    proxy.stall = True
    started = time.monotonic()
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(url, _tree(1000, seed=2))
    assert str(e.value) == _no_answer(url, "cannot write")
    assert time.monotonic() - started < 8
    proxy.stall = False
    assert ckptschema.load(url)["step"] == 1


# Concurrency


def test_a_large_read_has_several_ranges_in_flight(bucket, proxy):
    url = f"s3://{bucket}/blob.bin"
    payload = np.random.default_rng(0).integers(0, 255, 64 * MiB, dtype=np.uint8)
    _remote.upload(url, [payload])
    source = _remote.RemoteSource(url)
    proxy.peak = 0
    buffer = np.empty_like(payload)
    source.read_into(0, buffer.data)
    assert np.array_equal(buffer, payload)
    assert proxy.peak >= 4


def test_the_concurrency_setting_bounds_the_requests_in_flight(bucket, proxy, monkeypatch):
    url = f"s3://{bucket}/blob.bin"
    _remote.upload(url, [bytes(32 * MiB)])
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_CONCURRENCY", "1")
    source = _remote.RemoteSource(url)
    proxy.peak, proxy.requests = 0, 0
    source.read_into(0, memoryview(bytearray(32 * MiB)))
    assert (proxy.peak, proxy.requests) == (1, 4)


def test_a_large_save_has_several_parts_in_flight(bucket, proxy):
    url = f"s3://{bucket}/model.safetensors"
    tree = _tree(64 * MiB, seed=3)
    proxy.peak = 0
    ckptschema.save(url, tree, checksum=None)
    assert proxy.peak >= 4 and proxy.parts == 5  # four parts of 16 MiB, and the last one with the header's bytes
    loaded = ckptschema.load(url)
    assert np.array_equal(np.asarray(loaded["w"]), tree["w"]) and _uploads(bucket) == []


# Clean uploads


def test_a_save_failing_mid_way_aborts_its_upload_and_keeps_the_old_object(bucket, proxy):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000, seed=1))
    proxy.reject_parts_after = 2
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(url, _tree(80 * MiB, seed=2), checksum=None)
    assert str(e.value) == f"{url}: cannot write (PermissionError: denied by the test proxy)"
    assert _uploads(bucket) == []
    assert ckptschema.load(url)["step"] == 1


def test_an_interrupted_save_aborts_its_upload(bucket, proxy):
    url = f"s3://{bucket}/model.safetensors"
    proxy.delay_parts = 1.0
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        ckptschema.save(url, _tree(40 * MiB), checksum=None)
    timer.join()
    assert _uploads(bucket) == [] and not _s3fs().exists(f"{bucket}/model.safetensors")


def test_a_save_aborts_the_uploads_killed_saves_left_for_the_same_key_only(bucket, monkeypatch):
    monkeypatch.setattr(_s3, "stale_after", lambda timeout: 2.0)  # instead of an hour (moto keeps whole seconds)
    fs, key = _s3fs(), "model.safetensors"
    killed = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=killed, PartNumber=1, Body=b"x" * 100)
    other_key = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key + ".other")["UploadId"]
    time.sleep(3.2)
    running = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    # moto reports one fixed date as every upload's start, so a part shows the running upload is alive
    fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=running, PartNumber=1, Body=b"y" * 100)
    ckptschema.save(f"s3://{bucket}/{key}", _tree(1000))
    assert sorted(u["UploadId"] for u in _uploads(bucket)) == sorted([other_key, running])


def test_upload_listdir_and_remove_work_on_whole_objects(bucket):
    base = f"s3://{bucket}/ckpt"
    _remote.upload(f"{base}/a.bin", [b"x", np.arange(3, dtype=np.uint8), memoryview(b"yz")])
    _remote.upload(f"{base}/sub/b.bin", [])
    assert _s3fs().cat_file(f"{bucket}/ckpt/a.bin") == b"x\x00\x01\x02yz"
    assert _remote.listdir(base) == ["a.bin", "sub"]
    _remote.remove(f"{base}/a.bin")
    _remote.remove(f"{base}/a.bin")  # already gone: fine
    assert _remote.listdir(base) == ["sub"] and _remote.listdir(f"s3://{bucket}/none") == []


# Coalesced reads


def test_read_runs_coalesces_close_runs_splits_large_ones_and_returns_exact_bytes(bucket, monkeypatch):
    url = f"s3://{bucket}/blob.bin"
    payload = (np.arange(20 * MiB + 100) % 251).astype(np.uint8)
    _remote.upload(url, [payload])
    source = _remote.RemoteSource(url)
    requests: list[tuple[int, int]] = []
    real = _s3.get_range

    async def counting(fs, path, start, end, *rest):
        requests.append((start, end))
        return await real(fs, path, start, end, *rest)

    monkeypatch.setattr(_s3, "get_range", counting)
    cases = [  # (runs as (offset, length), requests expected)
        ([(i * 1050, 1000) for i in range(100)], 1),  # gaps of 5% of the bytes asked: one range
        ([(i * 1024, 256) for i in range(64)], 64),  # a column block: gaps of 300%, one request a run
        ([(7, 20 * MiB)], 3),  # 20 MiB: three requests of at most 8 MiB
    ]
    for runs, expected in cases:
        requests.clear()
        buffers = [bytearray(n) for _, n in runs]
        source.read_runs([(offset, memoryview(b)) for (offset, _), b in zip(runs, buffers)])
        assert [bytes(b) for b in buffers] == [payload[o : o + n].tobytes() for o, n in runs]
        assert len(requests) == expected


def test_bad_settings_name_the_variable_and_the_fix(monkeypatch):
    url = f"memory://ckpt-{secrets.token_hex(4)}/model.safetensors"
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_CONCURRENCY", "0")
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(url, _tree(10))
    assert str(e.value) == (
        "CKPTSCHEMA_REMOTE_CONCURRENCY='0': expected a whole number of requests in flight, at least 1 "
        "(default 16); set it to e.g. 32 or unset it"
    )
    monkeypatch.delenv("CKPTSCHEMA_REMOTE_CONCURRENCY")
    monkeypatch.setenv("CKPTSCHEMA_REMOTE_TIMEOUT", "soon")
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.read_manifest(url)
    assert str(e.value) == (
        "CKPTSCHEMA_REMOTE_TIMEOUT='soon': expected the seconds one request may take, more than 0 "
        "(default 60); set it to e.g. 120 or unset it"
    )


def test_an_object_removed_while_read_is_a_changed_checkpoint(bucket):
    url = f"s3://{bucket}/model.safetensors"
    ckptschema.save(url, _tree(1000))
    source = _remote.RemoteSource(url)
    _remote.remove(url)
    with pytest.raises(ckptschema.CheckpointChangedError) as e:
        source.read_into(0, memoryview(bytearray(8)))
    assert str(e.value) == (
        f"{url}: the object was replaced while being read (opened as {source.version}; found no object); "
        f"nothing read from it is used: load it again"
    )


def test_a_sharded_save_failing_mid_way_removes_its_shards_and_keeps_the_previous_checkpoint(bucket, proxy):
    url = f"s3://{bucket}/run"
    ckptschema.save(url, _tree(1000, seed=1), max_shard_size="20MB")
    before = _remote.listdir(url)
    proxy.reject_parts_after = 2  # the first shard's two parts pass, the second shard's fail
    tree = {"a": _tree(20 * MiB, seed=2)["w"], "b": _tree(20 * MiB, seed=3)["w"], "step": 2}
    with pytest.raises(ckptschema.CkptSchemaError, match=r"/run/model-00002-of-00002-[0-9a-f]{8}\.safetensors: cannot"):
        ckptschema.save(url, tree, max_shard_size="20MB", checksum=None)
    assert _remote.listdir(url) == before
    assert _uploads(bucket) == []
    assert ckptschema.load(url)["step"] == 1
