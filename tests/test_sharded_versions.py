"""A sharded load reads one version: a checkpoint replaced midway is read again from the start.

A save replaces the index last and then removes the shards of the previous one; a load that
finds a shard gone (or replaced) while the index names other shards now starts over on the
new version, at most `READ_ATTEMPTS` times, and never returns a tree mixing two versions.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ckptschema
from ckptschema import _opening, _shards, _tensors
from ckptschema._shards import MAX_OPEN_SHARDS

INDEX = "model.safetensors.index.json"
SHARDS = MAX_OPEN_SHARDS + 2  # so that the first shards are closed, and opened again to be read


def _tree(step: int) -> dict:
    """A checkpoint whose every tensor holds its step: one that mixed two versions shows it."""
    return {"layers": [{"w": np.full(64, step, np.int32)} for _ in range(SHARDS)], "step": step}


def _save(directory: Path, step: int) -> None:
    ckptschema.save(directory, _tree(step), max_shard_size=256, metadata={"step": str(step)})


def _manifest_steps(manifest: ckptschema.Manifest) -> set[int]:
    """The step in the manifest (from the index) and in the user metadata (from the first shard)."""
    root = manifest.skeleton
    return {root["children"][root["keys"].index("step")]["value"], int(manifest.metadata["step"])}


def _steps_in(tree: dict) -> set[int]:
    return {tree["step"], *(int(v) for layer in tree["layers"] for v in np.asarray(layer["w"]))}


def _first_shard(directory: Path) -> str:
    return str(directory / next(iter(json.loads((directory / INDEX).read_text())["weight_map"].values())))


def _on_each_read(monkeypatch: pytest.MonkeyPatch, act: Callable[[int], None]) -> list[int]:
    """Call ``act(n)`` before the `n`-th batch of tensor reads of a load (after its headers are open)."""
    calls: list[int] = []
    real = _tensors.read_tensors

    def reading(source: object, wanted: object) -> list[np.ndarray]:
        calls.append(len(calls))
        act(calls[-1])
        return real(source, wanted)  # type: ignore[arg-type]

    monkeypatch.setattr(_tensors, "read_tensors", reading)
    return calls


def test_loads_overlapping_saves_in_a_loop_each_return_one_whole_version(tmp_path):
    directory = tmp_path / "ckpt"
    _save(directory, 0)
    stop = threading.Event()
    saved = [0]
    errors: list[BaseException] = []

    def saving() -> None:
        try:
            while not stop.is_set():
                saved[0] += 1
                _save(directory, saved[0])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    writer = threading.Thread(target=saving)
    writer.start()
    seen: set[int] = set()
    deadline = time.monotonic() + 12
    loads = 0
    try:
        while loads < 400 and time.monotonic() < deadline:
            tree = ckptschema.load(directory)
            steps = _steps_in(tree)
            assert len(steps) == 1, f"load {loads} mixed versions {sorted(steps)}"
            seen |= steps
            if loads % 10 == 0:
                assert len(_manifest_steps(ckptschema.read_manifest(directory))) == 1
                assert ckptschema.validate(directory, deep=True).ok
            loads += 1
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert loads >= 100 and saved[0] >= 5 and len(seen) >= 5  # the loads did overlap many saves


def test_a_checkpoint_saved_again_between_opening_and_reading_is_read_again_whole(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    calls = _on_each_read(monkeypatch, lambda n: _save(directory, 2) if n == 0 else None)
    assert _steps_in(ckptschema.load(directory)) == {2}
    assert len(calls) == 2  # the first load found its first shard gone, the second read version 2


def test_validate_and_read_manifest_read_again_too(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    calls = _on_each_read(monkeypatch, lambda n: _save(directory, 2) if n == 0 else None)
    # validate reads tensor by tensor, through read_tensor: it is restarted by the shard it finds gone
    monkeypatch.setattr(_tensors, "read_tensor", lambda *a: _tensors.read_tensors(a[0], [a[1:]])[0])
    report = ckptschema.validate(directory, deep=True)
    assert report.ok and len(calls) > SHARDS
    assert _manifest_steps(ckptschema.read_manifest(directory)) == {2}


def _rename_shards_to_fixed_names(directory: Path) -> None:
    """Give the shards the fixed names other tools use (``model-00001-of-00010.safetensors``)."""
    index = json.loads((directory / INDEX).read_text())
    renames = {name: name.rsplit("-", 1)[0] + ".safetensors" for name in set(index["weight_map"].values())}
    for old, new in renames.items():
        os.replace(directory / old, directory / new)
    index["weight_map"] = {key: renames[name] for key, name in index["weight_map"].items()}
    (directory / INDEX).write_text(json.dumps(index))


def test_shards_replaced_in_place_under_their_names_restart_the_load_on_the_new_files(tmp_path, monkeypatch):
    directory, other = tmp_path / "ckpt", tmp_path / "other"
    _save(directory, 1)
    _save(other, 2)
    _rename_shards_to_fixed_names(directory)
    _rename_shards_to_fixed_names(other)

    def replace_in_place(n: int) -> None:
        if n == 0:  # another tool writes version 2 over version 1, under the same names
            for name in os.listdir(other):
                os.replace(other / name, directory / name)

    calls = _on_each_read(monkeypatch, replace_in_place)
    assert _steps_in(ckptschema.load(directory)) == {2}
    assert len(calls) == 2


def test_a_checkpoint_replaced_during_every_read_is_a_checkpoint_changed_error(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 0)
    gone: list[str] = []

    def save_again(n: int) -> None:
        gone.append(_first_shard(directory))
        _save(directory, n + 1)

    calls = _on_each_read(monkeypatch, save_again)
    with pytest.raises(ckptschema.CheckpointChangedError) as e:
        ckptschema.load(directory)
    assert len(calls) == _opening.READ_ATTEMPTS == 4
    assert str(e.value) == (
        f"{directory}: the checkpoint was replaced while being read, 4 times in a row; read it when saves to it "
        f"are further apart, or from a copy (last: {gone[-1]}: the shard was removed while being loaded; load "
        f"again once no other process writes the checkpoint)"
    )
    assert isinstance(e.value, ckptschema.FormatError)


def test_a_shard_missing_while_the_index_is_unchanged_is_not_found_and_not_read_again(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    first = _first_shard(directory)
    os.unlink(first)
    opened: list[str] = []
    real = _shards.open_sharded
    monkeypatch.setattr(_shards, "open_sharded", lambda path: opened.append(path) or real(path))
    with pytest.raises(ckptschema.CheckpointNotFoundError) as e:
        ckptschema.load(directory)
    assert str(e.value) == f"{first}: shard cannot be opened (No such file or directory)"
    assert len(opened) == 1


def test_a_shard_deleted_midway_while_the_index_stays_is_not_found_after_one_more_read(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    first = _first_shard(directory)
    calls = _on_each_read(monkeypatch, lambda n: os.unlink(first) if n == 0 else None)
    with pytest.raises(ckptschema.CheckpointNotFoundError, match="shard cannot be opened"):
        ckptschema.load(directory)
    assert len(calls) == 1  # the second read stopped at the missing shard, before any tensor


def test_the_checkpoint_named_by_keyword_is_read_again_and_named_in_the_error(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 0)
    calls = _on_each_read(monkeypatch, lambda n: _save(directory, n + 1))
    monkeypatch.setattr(_tensors, "read_tensor", lambda *a: _tensors.read_tensors(a[0], [a[1:]])[0])
    with pytest.raises(ckptschema.CheckpointChangedError, match=f"^{directory}: the checkpoint was replaced"):
        ckptschema.load(path=directory)
    with pytest.raises(ckptschema.CheckpointChangedError, match=f"^{directory}: the checkpoint was replaced"):
        ckptschema.validate(source=directory, deep=True)
    assert len(calls) == 2 * _opening.READ_ATTEMPTS  # each attempt stopped at its first read
