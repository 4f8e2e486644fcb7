"""Crash-safe saves: a killed or failing save leaves the previous file whole and valid.

`save` writes a temporary file beside the target (``.NAME.XXXX.tmp``: hidden, and not a
``*.safetensors`` name), fsyncs it, renames it over the target and fsyncs the directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ckptschema
from ckptschema import CkptSchemaError

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import sys, numpy as np, ckptschema
tree = {f"t{i}": np.full((2 << 20,), 2.0, np.float32) for i in range(8)}  # 64 MB, all 2.0
print("go", flush=True)
ckptschema.save(sys.argv[1], tree)
print("saved", flush=True)
"""


def _old_tree() -> dict[str, np.ndarray]:
    return {f"t{i}": np.full((2 << 20,), 1.0, np.float32) for i in range(8)}


def _assert_whole(path: Path) -> float:
    """The file loads with verify=True and validates deep; returns its fill value (1 old, 2 new)."""
    assert ckptschema.validate(path, deep=True).ok
    tree = ckptschema.load(path, verify=True)
    values = {float(np.asarray(v)[0]) for v in tree.values()} | {float(np.asarray(v)[-1]) for v in tree.values()}
    assert len(values) == 1 and sorted(tree) == sorted(_old_tree())
    return values.pop()


def test_sigkill_during_save_leaves_the_previous_file_loadable_and_valid(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    outcomes = []
    for delay_ms in (0, 5, 15, 30, 60, 100, 160, 250, 400):
        ckptschema.save(path, _old_tree())
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "go"
        time.sleep(delay_ms / 1000)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != path.name)
        outcomes.append((delay_ms, _assert_whole(path), leftovers))
        assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [path.name]
        assert all(n.startswith(".model.safetensors.") and n.endswith(".tmp") for n in leftovers), leftovers
        for name in leftovers:
            (tmp_path / name).unlink()
    # At least one kill landed mid-write (a temporary file was left) with the old file intact.
    assert any(value == 1.0 and leftovers for _, value, leftovers in outcomes), outcomes


def test_exception_late_in_the_tree_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, _old_tree())
    before = path.read_bytes()
    bad = {**{f"t{i}": np.zeros(4, np.float32) for i in range(8)}, "z_last": object()}
    with pytest.raises(CkptSchemaError):
        ckptschema.save(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_write_failure_mid_save_removes_the_temp_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    before = path.read_bytes()
    # The child may write at most 1 MB per file, so the 64 MB save fails half-way with EFBIG.
    script = (
        "import resource, signal, sys, numpy as np, ckptschema\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        "    ckptschema.save(sys.argv[1], {'w': np.ones(16 << 20, np.float32)})\n"
        "except ckptschema.CkptSchemaError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("CkptSchemaError ") and "cannot write" in proc.stdout
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_save_over_an_existing_file_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    ckptschema.save(path, {"w": np.zeros(4, np.float32)})
    assert os.listdir(tmp_path) == [path.name]
    assert ckptschema.load(path, verify=True)["w"].tolist() == [0, 0, 0, 0]


def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def _size(path: Path) -> int:
    """The size of a file another process may rename away meanwhile (0 if it is gone)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _start_save(path: Path) -> subprocess.Popen:
    """A child running a real 64 MB save to `path`, stopped or killed by the caller once its temp file has data."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout is not None and child.stdout.readline().strip() == "go"
    _wait_for(lambda: any(_size(p) > 0 for p in _temp_files(path.parent)))
    return child


def test_save_removes_the_temp_file_a_sigkilled_save_left(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    child = _start_save(path)
    child.kill()
    child.wait()
    child.stdout.close()  # type: ignore[union-attr]
    assert len(_temp_files(tmp_path)) == 1
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    assert os.listdir(tmp_path) == [path.name]


def test_save_keeps_the_temp_file_of_a_save_still_running_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    child = _start_save(path)
    child.send_signal(signal.SIGSTOP)  # mid-write, holding its temp file's lock
    try:
        (running,) = _temp_files(tmp_path)
        ckptschema.save(path, {"w": np.ones(4, np.float32)})
        assert sorted(os.listdir(tmp_path)) == sorted([path.name, running.name])
    finally:
        child.send_signal(signal.SIGCONT)
    assert child.communicate(timeout=120)[0].strip() == "saved" and child.returncode == 0
    assert _assert_whole(path) == 2.0
    assert os.listdir(tmp_path) == [path.name]


def test_save_to_a_file_name_of_255_bytes(tmp_path: Path) -> None:
    path = tmp_path / ("é" * 97 + "m" * 49 + ".safetensors")
    assert len(path.name.encode()) == 255
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    ckptschema.save(path, {"w": np.zeros(4, np.float32)})
    assert os.listdir(tmp_path) == [path.name]
    assert ckptschema.load(path)["w"].tolist() == [0, 0, 0, 0]


def test_save_keeps_an_empty_temp_file_younger_than_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    fresh = tmp_path / ".model.safetensors.0123456789ab.tmp"  # as a save leaves it just before locking it
    fresh.touch()
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, fresh.name])
    os.utime(fresh, (time.time() - 120, time.time() - 120))
    ckptschema.save(path, {"w": np.ones(4, np.float32)})
    assert os.listdir(tmp_path) == [path.name]
