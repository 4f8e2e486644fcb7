"""Checksums: a BLAKE3 (default) or sha256 digest per tensor, checked by load(verify=True) and validate(deep=True)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path

import blake3
import numpy as np
import pytest

import ckptschema
from ckptschema import IntegrityError


def _tensor_bytes(path: Path, key: str) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8 : 8 + n])[key]["data_offsets"]
    return data[8 + n + start : 8 + n + end]


def _flip(path: Path, key: str) -> None:
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    start, _ = json.loads(data[8 : 8 + n])[key]["data_offsets"]
    data[8 + n + start] ^= 0x01
    path.write_bytes(bytes(data))


def test_blake3_is_the_default_checksum_and_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    manifest = ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(3, np.float32)})
    assert manifest.checksum == "blake3"
    assert ckptschema.read_manifest(tmp_path / "m.safetensors").checksum == "blake3"


def test_blake3_digests_are_blake3_of_the_tensor_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    manifest = ckptschema.save(path, {"a": np.arange(10, dtype=np.int16), "b": np.zeros((0, 3), np.float32)})
    assert manifest.tensors["a"].digest == blake3.blake3(_tensor_bytes(path, "a")).hexdigest()
    assert manifest.tensors["b"].digest == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_digests_match_sha256sum_of_the_tensor_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tree = {"a": np.arange(10, dtype=np.int16), "b": np.zeros((0, 3), np.float32)}
    manifest = ckptschema.save(path, tree, checksum="sha256")
    assert ckptschema.read_manifest(path).checksum == "sha256"
    for key in ("a", "b"):
        raw = _tensor_bytes(path, key)
        (tmp_path / key).write_bytes(raw)
        sha256sum = subprocess.run(["sha256sum", str(tmp_path / key)], capture_output=True, text=True, check=True)
        assert manifest.tensors[key].digest == sha256sum.stdout.split()[0] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("checksum", ["blake3", "sha256"])
def test_large_tensor_hashed_on_a_second_thread_has_the_right_digest(tmp_path: Path, checksum: str) -> None:
    big = np.arange(3 << 20, dtype=np.float32)  # 12 MB: above the size hashed in a worker thread
    manifest = ckptschema.save(tmp_path / "m.safetensors", {"big": big}, checksum=checksum)
    expected = blake3.blake3(big.tobytes()) if checksum == "blake3" else hashlib.sha256(big.tobytes())
    assert manifest.tensors["big"].digest == expected.hexdigest()


def test_a_sha256_file_is_verified_with_sha256(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.ones(4, np.float32)}, checksum="sha256")
    _flip(path, "w")
    with pytest.raises(IntegrityError, match="tensor 'w' fails its sha256 checksum"):
        ckptschema.load(path, verify=True)


def test_verify_raises_integrity_error_naming_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"layers": [{"w": np.ones(4, np.float32)}, {"w": np.ones(4, np.float32)}]})
    _flip(path, "layers.1.w")
    with pytest.raises(IntegrityError) as info:
        ckptschema.load(path, verify=True)
    assert str(info.value) == f"{path}: tensor 'layers.1.w' fails its blake3 checksum; the file is corrupt"


def test_verify_with_a_template_raises_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tree = {"w": np.ones(4, np.float32)}
    ckptschema.save(path, tree)
    _flip(path, "w")
    with pytest.raises(IntegrityError, match="tensor 'w' fails its blake3 checksum"):
        ckptschema.load(path, template=tree, verify=True)


def test_load_without_verify_does_not_hash(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.zeros(4, np.uint8)})
    _flip(path, "w")
    assert ckptschema.load(path)["w"].tolist() == [1, 0, 0, 0]


def test_validate_deep_reports_the_corrupt_tensor_by_path(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"params": {"w": np.ones(4, np.float32), "b": np.ones(2, np.float32)}})
    _flip(path, "params.b")
    assert ckptschema.validate(path).ok  # shallow validation reads only the header
    report = ckptschema.validate(path, deep=True)
    assert not report.ok
    assert [(i.kind, i.path) for i in report.issues] == [("checksum", "params/b")]


def test_validate_deep_passes_an_intact_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.ones((2, 3), np.float16), "s": 3})
    assert ckptschema.validate(path, deep=True).ok


def test_checksum_none_records_no_digests(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    manifest = ckptschema.save(path, {"w": np.ones(4, np.float32)}, checksum=None)
    assert manifest.checksum is None
    assert manifest.tensors["w"].digest is None
    assert ckptschema.load(path, verify=True)["w"].tolist() == [1, 1, 1, 1]
