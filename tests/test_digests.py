"""The digest algorithms: known answers, every input form hashing its bytes, threads and chunks agreeing."""

from __future__ import annotations

import ast
import hashlib
import itertools
import subprocess
import sys
import tracemalloc
from pathlib import Path

import blake3
import ml_dtypes
import numpy as np
import pytest

from ckptschema import _digests
from ckptschema._digests import ALGORITHMS, DEFAULT, HEX_LENGTH, THREADS_FROM, check_algorithm, digest, hasher

BLAKE3_OF_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
UNKNOWN = "unknown checksum algorithm {!s}; supported: 'blake3', 'sha256'"


def _random(nbytes: int) -> np.ndarray:
    return np.frombuffer(np.random.default_rng(0).bytes(nbytes), np.uint8)


def test_blake3_of_the_empty_input_is_the_official_test_vector():
    assert digest(b"", "blake3") == BLAKE3_OF_EMPTY


def test_sha256_of_abc_is_the_fips_180_test_vector():
    assert digest(b"abc", "sha256") == SHA256_OF_ABC


def test_blake3_of_abc_is_what_the_blake3_reference_gives():
    assert digest(b"abc", "blake3") == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_digest_is_hex_length_lowercase_hex(algorithm):
    for data in (b"", b"abc", _random(THREADS_FROM + 1)):
        text = digest(data, algorithm)
        assert len(text) == HEX_LENGTH and text == text.lower() and int(text, 16) >= 0


def test_the_default_is_a_supported_algorithm():
    assert DEFAULT in ALGORITHMS


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_of_a_memoryview_of_an_array_equals_digest_of_its_bytes(algorithm):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert digest(memoryview(array), algorithm) == digest(array.tobytes(), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_of_an_array_is_the_digest_of_its_c_order_bytes(algorithm):
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    for form in (array, array.T, array[:, ::2], np.asfortranarray(array)):
        assert digest(form, algorithm) == digest(form.tobytes(order="C"), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_of_a_strided_memoryview_is_the_digest_of_its_c_order_bytes(algorithm):
    view = memoryview(np.arange(12, dtype=np.float32))[::3]
    assert digest(view, algorithm) == digest(view.tobytes(), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_of_a_dtype_without_a_buffer_format_is_the_digest_of_its_bytes(algorithm):
    array = np.array([1.5, -2.0, 0.0], dtype=ml_dtypes.bfloat16)
    assert digest(array, algorithm) == digest(array.tobytes(), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digest_of_zero_size_and_zero_dimensional_inputs_is_the_digest_of_their_bytes(algorithm):
    assert digest(np.zeros((0, 3), np.float32), algorithm) == digest(b"", algorithm)
    assert digest(memoryview(np.zeros((0, 3), np.float32)), algorithm) == digest(b"", algorithm)
    assert digest(np.float64(2.5), algorithm) == digest(np.float64(2.5).tobytes(), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bytearrays_and_multi_dimensional_byte_views_hash_their_bytes(algorithm):
    data = bytes(range(12))
    assert digest(bytearray(data), algorithm) == digest(data, algorithm)
    assert digest(memoryview(data).cast("B", (3, 4)), algorithm) == digest(data, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("form", ["array", "memoryview"])
def test_a_contiguous_array_is_hashed_without_copying_its_bytes(algorithm, form):
    array = _random(32 << 20).view(np.float32).reshape(-1, 1024)
    data = array if form == "array" else memoryview(array)
    tracemalloc.start()
    try:
        digest(data, algorithm)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_threaded_and_single_threaded_blake3_agree_on_a_multi_mib_buffer():
    data = _random(8 * THREADS_FROM + 12345)
    one_thread = blake3.blake3(data, max_threads=1).hexdigest()
    assert digest(data, "blake3") == one_thread
    assert blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() == one_thread
    small, large = hasher("blake3", 0), hasher("blake3", data.nbytes)
    small.update(data)
    large.update(data)
    assert small.hexdigest() == large.hexdigest() == one_thread


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_incremental_update_in_chunks_equals_one_shot(algorithm):
    data = _random(3 * THREADS_FROM + 7)
    cuts = [0, 1, 64, 1000, THREADS_FROM, 2 * THREADS_FROM + 3, data.nbytes]
    h = hasher(algorithm, data.nbytes)
    for start, stop in itertools.pairwise(cuts):
        h.update(memoryview(data)[start:stop])
    assert h.hexdigest() == digest(data, algorithm) == digest(data.tobytes(), algorithm)


def test_the_hashes_are_the_standard_algorithms():
    data = _random(5000)
    assert digest(data, "sha256") == hashlib.sha256(data.tobytes()).hexdigest()
    assert digest(data, "blake3") == blake3.blake3(data.tobytes()).hexdigest()


@pytest.mark.parametrize("name", ["md5", "SHA256", "", None, 5])
def test_an_unknown_algorithm_is_refused_naming_the_supported_ones(name):
    with pytest.raises(ValueError) as info:
        check_algorithm(name)
    assert str(info.value) == UNKNOWN.format(repr(name))


@pytest.mark.parametrize("call", [lambda: digest(b"abc", "md5"), lambda: hasher("md5", 3)])
def test_digest_and_hasher_refuse_an_unknown_algorithm_with_the_same_message(call):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == "unknown checksum algorithm 'md5'; supported: 'blake3', 'sha256'"


def test_check_algorithm_returns_a_supported_name_unchanged():
    assert [check_algorithm(name) for name in ALGORITHMS] == list(ALGORITHMS)


def test_the_module_imports_neither_pydantic_nor_another_ckptschema_module():
    tree = ast.parse(Path(_digests.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("ckptschema" if node.level else (node.module or "").partition(".")[0])
    assert sorted(imported) == ["__future__", "blake3", "hashlib", "numpy", "typing"]


@pytest.mark.slow
def test_the_digest_benchmark_runs_quick_and_prints_its_three_tables():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "digests.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("## Throughput", "## Where BLAKE3's threads pay off", "## Hashing the big tensors while"):
        assert heading in proc.stdout
    assert "| _digests blake3 (threads by size) | big: 36 tensors, a digest each |" in proc.stdout
