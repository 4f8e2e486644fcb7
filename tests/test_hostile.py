"""Hostile and malformed files: every one gives a CkptSchemaError, quickly, in bounded memory.

The adversarial corpus (`tests/make_corpus.py`) is read in a child process so that a crash
(SIGBUS, stack overflow), a hang or a memory blow-up cannot take pytest down and is seen
for what it is. JAX reserves several GB of address space when it starts, so a flat
``RLIMIT_AS`` of 1 GiB would fail at import; instead the child starts JAX, does a warm-up
load, and only then sets ``RLIMIT_AS`` to the address space it has mapped plus 1 GiB. Any
case that tries to map more than 1 GiB beyond that gets a MemoryError, which fails the test.
Each call is timed by the CPU time the child spends in it, after the frameworks are imported.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema import CkptSchemaError, FormatError
from ckptschema._dtypes import DTYPES
from ckptschema._header import read_header
from ckptschema._sources import BytesSource, FileSource
from ckptschema._tensors import read_tensor

from .make_corpus import SENTINEL_FILE, SENTINEL_MODULE, build_corpus, split, valid_bytes, valid_tree

REPO = Path(__file__).resolve().parent.parent
MEMORY = 1 << 30
#: CPU time (not wall-clock time, which a loaded runner stretches) one call may spend on a case.
CPU_SECONDS = 2.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    build_corpus(directory)
    return directory


@pytest.fixture(scope="module")
def corpus_results(corpus: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "make_corpus.py"), "--run", str(corpus), str(MEMORY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = next((r for r in reversed(rows) if "start" in r), None)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}) during {last}:\n{proc.stderr[-3000:]}"
    assert "done" in rows[-1], proc.stderr[-3000:]
    return rows


def test_corpus_has_more_than_100_cases(corpus: Path) -> None:
    cases = json.loads((corpus / "cases.json").read_text())
    assert len(cases) > 100
    assert len({c["name"] for c in cases}) == len(cases)


def test_every_corpus_case_raises_the_expected_ckptschema_error(corpus_results: list[dict]) -> None:
    results = [r for r in corpus_results if "case" in r]
    wrong = [f"{r['case']} [{r['call']}]: {r['raised']} {r['message']}" for r in results if not r["ok"]]
    assert not wrong, "\n".join(wrong)
    assert len(results) > 400


def test_every_corpus_case_fails_in_under_2_cpu_seconds(corpus_results: list[dict]) -> None:
    results = [r for r in corpus_results if "case" in r]
    slow = [
        f"{r['case']} [{r['call']}]: {r['cpu_seconds']:.2f}s CPU" for r in results if r["cpu_seconds"] > CPU_SECONDS
    ]
    assert not slow, "\n".join(slow)


def test_corpus_ran_under_an_address_space_limit_of_1_gib(corpus_results: list[dict]) -> None:
    assert corpus_results[0]["extra"] == MEMORY
    raised = {r["raised"] for r in corpus_results if "case" in r}
    assert "builtins.MemoryError" not in raised


def test_no_type_named_in_a_corpus_manifest_was_imported(corpus_results: list[dict]) -> None:
    done = corpus_results[-1]
    assert done["sentinel_imported"] is False
    assert done["sentinel_in_modules"] is False


def test_hostile_container_type_is_refused_without_import(tmp_path: Path, corpus: Path) -> None:
    sys.path.insert(0, str(corpus / "sentinel_dir"))
    try:
        with pytest.raises(
            FormatError, match=rf"container type '{SENTINEL_MODULE}.Evil' at params is not on the allow-list"
        ):
            ckptschema.load(corpus / f"hostile_dict_{SENTINEL_MODULE}_Evil.safetensors")
    finally:
        sys.path.remove(str(corpus / "sentinel_dir"))
    assert SENTINEL_MODULE not in sys.modules
    assert not (corpus / "sentinel_dir" / SENTINEL_FILE).exists()


def test_future_version_error_names_both_versions(corpus: Path) -> None:
    path = corpus / "manifest_future_version.safetensors"
    with pytest.raises(FormatError) as info:
        ckptschema.read_manifest(path)
    assert str(info.value) == (
        f"{path}: manifest version 2 is newer than this ckptschema reads (version 1); upgrade ckptschema"
    )


def test_lying_header_length_is_refused_before_allocating(corpus: Path) -> None:
    path = corpus / f"header_length_{2**64 - 1}.safetensors"
    with pytest.raises(FormatError, match=r"header of 18446744073709551615 bytes exceeds MAX_HEADER_BYTES=100000000"):
        ckptschema.read_manifest(path)


def test_fifo_is_refused_without_blocking(corpus: Path) -> None:
    with pytest.raises(FormatError, match="not a regular file"):
        ckptschema.load(corpus / "fifo.safetensors")


def test_value_bomb_under_the_byte_cap_names_the_limit(corpus: Path) -> None:
    with pytest.raises(FormatError, match="MAX_JSON_VALUES=4000000"):
        ckptschema.read_manifest(corpus / "empty_lists_10m.safetensors")


def test_file_truncated_by_another_writer_while_reading_gives_format_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.arange(1 << 16, dtype=np.float32)})
    source = FileSource(path)
    try:
        header = read_header(source)
        os.truncate(path, header.data_start + 100)  # another writer cuts the file after the header is read
        with pytest.raises(FormatError, match=r"file ended at byte \d+, expected \d+ more bytes"):
            read_tensor(source, header.entries["w"], DTYPES["float32"], (1 << 16,))
    finally:
        source.close()


def test_manifest_of_many_keys_with_quotes_backslashes_and_colons_round_trips(tmp_path: Path) -> None:
    # Over 100,000 colons, so the reader counts object keys before parsing (MAX_UNKNOWN_KEYS);
    # escaped quotes, backslashes and colons inside names must not count as keys.
    tree = {f'w\\"{i}:0\\': np.zeros(0, np.uint8) for i in range(25_000)}
    ckptschema.save(tmp_path / "names.safetensors", tree)
    assert ckptschema.read_manifest(tmp_path / "names.safetensors").metadata == {}
    assert list(ckptschema.load(tmp_path / "names.safetensors")) == list(tree)


def test_map_of_1900000_keys_is_refused_before_parsing_naming_the_limit(corpus: Path) -> None:
    path = corpus / "wrapper_metadata_1900000_entries.safetensors"
    with pytest.raises(FormatError) as info:
        ckptschema.read_manifest(path)
    assert str(info.value) == (
        f"{path}: manifest holds more than MAX_UNKNOWN_KEYS=64 object keys that are not names of the format "
        "(a key spaced from its colon counts as one); a manifest holds only the format's fields"
    )


def test_tree_200_levels_deep_round_trips(tmp_path: Path) -> None:
    tree: object = np.arange(3, dtype=np.int32)
    for i in range(200):
        tree = {f"l{i % 10}": tree}
    ckptschema.save(tmp_path / "deep.safetensors", tree)
    loaded = ckptschema.load(tmp_path / "deep.safetensors", verify=True)
    for i in reversed(range(200)):
        loaded = loaded[f"l{i % 10}"]
    assert np.asarray(loaded).tolist() == [0, 1, 2]


# ------------------------------------------------------------------ random byte mutations

_VALID = valid_bytes()
_HEADER_END = 8 + struct.unpack("<Q", _VALID[:8])[0]
_TENSORS = sorted(
    (np.asarray(leaf).dtype.str, np.asarray(leaf).shape, np.asarray(leaf).tobytes())
    for leaf in __import__("jax").tree.leaves(valid_tree())
    if isinstance(leaf, np.ndarray)
)


def _tensors_of(tree: object) -> list[tuple[str, tuple[int, ...], bytes]]:
    import jax

    return sorted(
        (np.asarray(x).dtype.str, np.asarray(x).shape, np.asarray(x).tobytes())
        for x in jax.tree.leaves(tree)
        if hasattr(x, "dtype") and not isinstance(x, (bool, int, float))
    )


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID)
    region = draw(st.sampled_from(["length", "header", "data", "anywhere"]))
    bounds = {
        "length": (0, 7),
        "header": (8, _HEADER_END - 1),
        "data": (_HEADER_END, len(data) - 1),
        "anywhere": (0, len(data) - 1),
    }[region]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(*bounds))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()) and region == "anywhere":
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@given(_mutated())
def test_mutated_bytes_give_a_ckptschema_error_or_the_exact_tensors(data: bytes) -> None:
    try:
        tree = ckptschema.loads(data, verify=True)
    except CkptSchemaError:
        return
    if read_header(BytesSource(data)).manifest_text is None:
        return  # the mutation removed the manifest: a plain safetensors file, with no checksums to hold
    assert _tensors_of(tree) == _TENSORS  # checksums cover every tensor byte


@given(_mutated())
def test_mutated_bytes_validate_deep_reports_or_raises_format_error(data: bytes) -> None:
    try:
        report = ckptschema.validate(data, deep=True)
    except CkptSchemaError:
        return
    _, body = split(_VALID)
    if data[_HEADER_END:] != body and data[:_HEADER_END] == _VALID[:_HEADER_END]:
        assert not report.ok
        assert {i.kind for i in report.issues} == {"checksum"}


@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_random_bytes_after_any_length_prefix_give_format_error_or_a_plain_file(body: bytes, length: int) -> None:
    try:
        result = ckptschema.loads(struct.pack("<Q", length) + body)
    except FormatError:
        return
    assert isinstance(result, dict)  # a valid (tiny) plain safetensors file
