"""The benchmark harness runs end to end in --quick mode and verifies every load bit for bit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "run.py")

# The rows of the "Targets (SPEC.md section 7)" table, one per like-for-like target.
TARGETS = [
    "big strict load (jax out) <= 0.5x safetensors.numpy load_file",
    "big load: memory added <= 1.05x payload",
    "big checksummed save <= 1.5x safetensors.numpy+fsync save",
    "many strict load (jax out) <= 1.0x safetensors.flax load_file",
    "many load with a numpy template <= 1.0x safetensors.numpy load_file",
    "many save <= 1.0x safetensors.numpy save_file",
    "many file size <= 1.3x safetensors.numpy file",
    "read_manifest of the 20k-leaf many file <= 50 ms",
    "read_manifest of a 100k-leaf file <= 250 ms",
    "read_manifest linear in leaves: per-leaf cost at 100k <= 1.5x at 10k",
    *[f"{w} {what} >= 3x faster than orbax" for w in ("big", "bf16", "many") for what in ("save", "load")],
]


def _section(text: str, title: str) -> list[str]:
    """The table rows (after the header and rule) of the section headed `## {title}`."""
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return rows[2:]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One --quick run of the harness, shared by the tests below: (exit code, stderr, report, workdir)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--out", str(out), "--workdir", str(tmp / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return proc.returncode, proc.stderr, out.read_text() if out.exists() else "", tmp / "work"


# The harness runs in a subprocess, so the competitors (flax, orbax, equinox: the 'bench'
# extra, installed by tox) are never imported into this test process.
@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_writes_tables_of_verified_loads(quick_report):
    returncode, stderr, text, workdir = quick_report
    assert returncode == 0, stderr[-2000:]

    for workload in ("big", "bf16", "many"):
        assert f"### {workload}:" in text
    assert (
        "| tool | out | load s, median [min-max] | load / st.numpy | load / floor | save s, median [min-max] "
        "| save / st.numpy | save / st.numpy+fsync | file | file / st.numpy |" in text
    )
    assert re.search(r"^\| ckptschema \| jax \| \d", text, re.M)
    assert re.search(r"^\| safetensors\.numpy \| numpy \| \d", text, re.M)
    verified = re.search(r"(\d+) loads verified, (\d+) mismatched, (\d+) errors", text)
    assert verified is not None
    assert int(verified.group(1)) > 0 and verified.group(2, 3) == ("0", "0")
    assert "ERRORS" not in text
    assert "| CPU |" in text and "| ckptschema |" in text
    assert not workdir.exists()  # scratch files are removed


@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_loads_numpy_out_with_a_numpy_template(quick_report):
    text = quick_report[2]
    rows = re.findall(r"^\| ckptschema template=numpy \| (\w+) \| \d", text, re.M)
    assert rows == ["numpy", "numpy", "numpy"]  # one row per workload, every load verified above


@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_times_the_fsync_save_reference_and_file_sizes(quick_report):
    text = quick_report[2]
    fsync_rows = re.findall(r"^\| safetensors\.numpy\+fsync \| n/a \| n/a \| n/a \| n/a \| (\d[^|]*) \|", text, re.M)
    assert len(fsync_rows) == 3
    sizes = re.findall(r"^\| ckptschema \|(?:[^|]*\|){7} ([\d.]+) MB \| ([\d.]+)x \|", text, re.M)
    assert len(sizes) == 3 and all(float(mb) > 0 and float(ratio) > 0 for mb, ratio in sizes)


@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_reports_read_manifest_scaling_per_leaf(quick_report):
    rows = _section(quick_report[2], "read_manifest scaling")
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == ["100", "1000", "2000"]
    for leaves, ms, per_1k, header, per_leaf in cells:
        assert re.fullmatch(r"[\d.]+ \[[\d.]+-[\d.]+\]", ms)
        assert float(per_1k) > 0
        assert float(per_leaf) == pytest.approx(int(header) / int(leaves), abs=0.05)


@pytest.mark.slow
@pytest.mark.framework
def test_quick_benchmark_rates_every_spec_target_pass_or_miss(quick_report):
    rows = _section(quick_report[2], "Targets (SPEC.md section 7)")
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert labels == TARGETS
    for row in rows:
        assert row.endswith(" | PASS |") or row.endswith(" | **MISS** |"), row
    assert _section(quick_report[2], "Other checks (issue 6)")


MULTIHOST = os.path.join(ROOT, "benchmarks", "multihost.py")
MULTIHOST_GOALS = [
    "save >= 3x faster than orbax",
    "restore >= 3x faster than orbax",
    "restore: bytes read per process <= 1.1x own share (worst process)",
    "save: peak memory per process <= own share + 10% (worst process)",
]


# Two processes of JAX's runtime on 127.0.0.1 save and restore with ckptschema and orbax.
@pytest.mark.slow
@pytest.mark.framework
def test_quick_multihost_benchmark_reports_verified_restores_and_rates_every_goal(tmp_path):
    out = tmp_path / "MULTIHOST.md"
    proc = subprocess.run(
        [sys.executable, MULTIHOST, "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "### 2 processes x 2 CPU devices (4 devices):" in text
    assert re.search(
        r"^\| ckptschema \| \d[^|]* \| 1\.00x \| \d[^|]* \| 1\.00x \| [\d.]+ MB \| 4 of 4 \| none \|$", text, re.M
    )
    assert re.search(
        r"^\| orbax \| \d[^|]* \| [\d.]+x \| \d[^|]* \| [\d.]+x \| [\d.]+ MB \| 4 of 4 \| none \|$", text, re.M
    )
    assert (
        len(re.findall(r"^\| (?:ckptschema|orbax) \| [01] \| [\d.]+ MB \| [\d.]+ MB \|", text, re.M)) == 4
    )  # tool x process
    assert "8 verified, 0 mismatched, 0 errors" in text
    rows = _section(text, "Results")
    goals = [
        row.split(" | ")[0].removeprefix("| ")
        for row in rows
        if row.endswith(" | PASS |") or row.endswith(" | **MISS** |")
    ]
    assert goals == MULTIHOST_GOALS
    assert not (tmp_path / "work").exists()  # scratch files are removed
