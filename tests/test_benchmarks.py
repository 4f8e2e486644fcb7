"""The benchmark harness runs end to end in --quick mode and verifies every load bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "run.py")


# The harness runs in a subprocess, so the competitors (flax, orbax, equinox: the 'bench'
# extra, installed by tox) are never imported into this test process.
@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_writes_tables_of_verified_loads(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()

    for workload in ("big", "bf16", "many"):
        assert f"### {workload}:" in text
    assert "| tool | out | load s, median [min-max] | load / st.numpy | load / floor |" in text
    assert re.search(r"^\| ckptschema \| jax \| \d", text, re.M)
    assert re.search(r"^\| safetensors\.numpy \| numpy \| \d", text, re.M)
    verified = re.search(r"(\d+) loads verified, (\d+) mismatched, (\d+) errors", text)
    assert verified is not None
    assert int(verified.group(1)) > 0 and verified.group(2, 3) == ("0", "0")
    assert "ERRORS" not in text
    assert "## Targets (issue 6)" in text
    assert "| CPU |" in text and "| ckptschema |" in text
    assert not (tmp_path / "work").exists()  # scratch files are removed
