"""The public entry points run with the cyclic garbage collector paused, and restore it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ckptschema


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of every garbage collection that starts while the test runs."""
    started: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    yield started
    gc.callbacks.remove(count)


def _tree() -> dict:
    return {f"layer_{i}": {"w": np.full(3, i, np.float32), "n": i} for i in range(3000)}


def test_save_load_and_validate_of_many_leaves_start_no_collection(tmp_path: Path, collections: list[int]) -> None:
    path = tmp_path / "m.safetensors"
    tree = _tree()
    collections.clear()
    ckptschema.save(path, tree)
    ckptschema.load(path)
    ckptschema.load(path, template=tree)
    ckptschema.read_manifest(path)
    ckptschema.validate(path, tree, deep=True)
    ckptschema.loads(ckptschema.dumps(tree), template=tree)
    ckptschema.manifest_of(tree)
    assert collections == []


def test_the_collector_is_enabled_again_after_a_call_that_raises(tmp_path: Path) -> None:
    assert gc.isenabled()
    with pytest.raises(ckptschema.CheckpointNotFoundError):
        ckptschema.load(tmp_path / "missing.safetensors")
    assert gc.isenabled()
