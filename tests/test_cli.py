"""The command line: `main(argv)` called directly, plus the installed entry point and `python -m`."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import numpy as np
import pytest

import ckptschema
from ckptschema.cli import Inventory, main

F32 = np.float32


def flax_like(kernel_shape: tuple[int, int] = (3, 4)) -> dict:
    """A small flax-linen-like variables dict: two Dense layers and a step counter."""
    return {
        "params": {
            "Dense_0": {"kernel": np.ones(kernel_shape, F32), "bias": np.zeros(kernel_shape[1], F32)},
            "Dense_1": {"kernel": np.full((4, 2), 0.5, F32), "bias": np.zeros(2, F32)},
        },
        "step": 3,
    }


def saved(tmp_path: Path, name: str = "model.safetensors", tree: dict | None = None) -> str:
    path = tmp_path / name
    ckptschema.save(path, flax_like() if tree is None else tree, framework="flax")
    return str(path)


def digest(array: np.ndarray) -> str:
    return blake3.blake3(np.ascontiguousarray(array).tobytes()).hexdigest()


def flip_one_bit(path: str, key: str) -> None:
    """Flip the lowest bit of the first byte of tensor `key`, found through the header."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        offset = 8 + length + header[key]["data_offsets"][0]
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


# ---------------------------------------------------------------------- the review flow


def test_schema_then_validate_against_it_passes(tmp_path, capsys):
    model = saved(tmp_path)
    schema = str(tmp_path / "model.schema.json")
    assert main(["schema", model, "-o", schema]) == 0
    assert main(["validate", model, "--schema", schema]) == 0
    assert capsys.readouterr().out == f"{model}: ok\n"


def test_validate_against_schema_fails_on_a_changed_shape_naming_the_path(tmp_path, capsys):
    schema = str(tmp_path / "model.schema.json")
    main(["schema", saved(tmp_path), "-o", schema])
    changed = saved(tmp_path, "changed.safetensors", flax_like(kernel_shape=(4, 4)))
    capsys.readouterr()
    assert main(["validate", changed, "--schema", schema]) == 1
    assert capsys.readouterr().out == (
        f"{changed}: 1 problem\n  shape (1):\n    params/Dense_0/kernel: shape (4, 4) in file, (3, 4) in schema\n"
    )


def test_validate_against_schema_fails_on_retrained_values(tmp_path, capsys):
    schema = str(tmp_path / "model.schema.json")
    main(["schema", saved(tmp_path), "-o", schema])
    tree = flax_like()
    tree["params"]["Dense_1"]["bias"] = np.ones(2, F32)
    retrained = saved(tmp_path, "retrained.safetensors", tree)
    capsys.readouterr()
    assert main(["validate", retrained, "--schema", schema]) == 1
    assert capsys.readouterr().out == (
        f"{retrained}: 1 problem\n"
        "  checksum (1):\n"
        f"    params/Dense_1/bias: checksum {digest(np.ones(2, F32))} in file, "
        f"{digest(np.zeros(2, F32))} in schema\n"
    )


def test_validate_against_a_missing_schema_exits_2(tmp_path, capsys):
    missing = tmp_path / "model.schema.json"
    assert main(["validate", saved(tmp_path), "--schema", str(missing)]) == 2
    assert capsys.readouterr().err == f"ckptschema: error: {missing}: cannot open (No such file or directory)\n"


def test_diff_shows_a_changed_shape_by_path(tmp_path, capsys):
    a = saved(tmp_path, "a.safetensors")
    b = saved(tmp_path, "b.safetensors", flax_like(kernel_shape=(4, 4)))
    assert main(["diff", a, b]) == 1
    assert capsys.readouterr().out == (
        f"{a} vs {b}: 1 difference\n  shape     params/Dense_0/kernel: (3, 4) -> (4, 4)\n"
    )


def test_diff_shows_added_removed_and_changed_values(tmp_path, capsys):
    old = flax_like()
    new = flax_like()
    del new["params"]["Dense_1"]
    new["params"]["Dense_2"] = {"bias": np.zeros(2, F32)}
    new["step"] = 4
    a, b = saved(tmp_path, "a.safetensors", old), saved(tmp_path, "b.safetensors", new)
    assert main(["diff", a, b]) == 1
    assert capsys.readouterr().out == (
        f"{a} vs {b}: 4 differences\n"
        "  removed   params/Dense_1/kernel: float32[4,2]\n"
        "  removed   params/Dense_1/bias: float32[2]\n"
        "  added     params/Dense_2/bias: float32[2]\n"
        "  value     step: int 3 -> int 4\n"
    )


def test_diff_of_equal_checkpoints_exits_0(tmp_path, capsys):
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors")
    assert main(["diff", a, b]) == 0
    assert capsys.readouterr().out == f"{a} vs {b}: no differences\n"


def test_diff_compares_a_schema_document_with_a_checkpoint(tmp_path, capsys):
    schema = str(tmp_path / "model.schema.json")
    main(["schema", saved(tmp_path), "-o", schema])
    changed = saved(tmp_path, "changed.safetensors", {**flax_like(), "step": 5})
    capsys.readouterr()
    assert main(["diff", schema, changed]) == 1
    assert capsys.readouterr().out == f"{schema} vs {changed}: 1 difference\n  value     step: int 3 -> int 5\n"


def test_diff_json_lists_each_difference(tmp_path, capsys):
    a = saved(tmp_path, "a.safetensors")
    b = saved(tmp_path, "b.safetensors", flax_like(kernel_shape=(4, 4)))
    assert main(["diff", a, b, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "a": a,
        "b": b,
        "equal": False,
        "differences": [{"change": "shape", "path": "params/Dense_0/kernel", "a": "(3, 4)", "b": "(4, 4)"}],
    }


# --------------------------------------------------------------------------------- deep


def test_validate_deep_fails_on_one_flipped_bit(tmp_path, capsys):
    model = saved(tmp_path)
    flip_one_bit(model, "params.Dense_1.kernel")
    flipped = np.full((4, 2), 0.5, F32)
    flipped.reshape(-1).view(np.uint8)[0] ^= 1
    assert main(["validate", model, "--deep"]) == 1
    assert capsys.readouterr().out == (
        f"{model}: 1 problem\n"
        "  checksum (1):\n"
        f"    params/Dense_1/kernel: checksum {digest(flipped)} in file, "
        f"{digest(np.full((4, 2), 0.5, F32))} in manifest\n"
    )


def test_validate_without_deep_reads_only_the_header(tmp_path, capsys):
    model = saved(tmp_path)
    flip_one_bit(model, "params.Dense_1.kernel")
    assert main(["validate", model]) == 0
    assert capsys.readouterr().out == f"{model}: ok\n"


def test_validate_deep_draws_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    model = saved(tmp_path)
    assert main(["validate", model, "--deep"]) == 0
    assert capsys.readouterr().err == ""


def test_validate_json_output_parses(tmp_path, capsys):
    model = saved(tmp_path)
    flip_one_bit(model, "params.Dense_0.bias")
    assert main(["validate", model, "--deep", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["source"], report["ok"]) == (model, False)
    assert [(i["kind"], i["path"], i["against"]) for i in report["issues"]] == [
        ("checksum", "params/Dense_0/bias", "manifest")
    ]


# ----------------------------------------------------------------------------- template

TEMPLATE_MODULE = """
import jax
import jax.numpy as jnp


def init():
    return {{
        "params": {{
            "Dense_0": {{"kernel": jnp.ones(({rows}, 4)), "bias": jnp.zeros(4)}},
            "Dense_1": {{"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}},
        }},
        "step": 0,
    }}


def abstract():
    return jax.eval_shape(init)
"""


def test_validate_against_a_template_function_passes(tmp_path, capsys, monkeypatch):
    model = saved(tmp_path)
    (tmp_path / "template_ok_model.py").write_text(TEMPLATE_MODULE.format(rows=3))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", model, "--template", "template_ok_model:abstract"]) == 0
    assert capsys.readouterr().out == f"{model}: ok\n"


def test_validate_against_a_template_function_names_the_mismatch(tmp_path, capsys, monkeypatch):
    model = saved(tmp_path)
    (tmp_path / "template_bad_model.py").write_text(TEMPLATE_MODULE.format(rows=5))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", model, "--template", "template_bad_model:abstract"]) == 1
    assert capsys.readouterr().out == (
        f"{model}: 1 problem\n  shape (1):\n    params/Dense_0/kernel: shape (3, 4) in file, (5, 4) in template\n"
    )


def test_validate_template_that_cannot_be_imported_exits_2(tmp_path, capsys, monkeypatch):
    model = saved(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", model, "--template", "no_such_template_module:abstract"]) == 2
    assert capsys.readouterr().err == (
        "ckptschema: error: --template: cannot import 'no_such_template_module' "
        "(ModuleNotFoundError: No module named 'no_such_template_module')\n"
    )


def test_validate_template_without_a_function_name_exits_2(tmp_path, capsys):
    assert main(["validate", saved(tmp_path), "--template", "model"]) == 2
    assert capsys.readouterr().err == "ckptschema: error: --template 'model' must look like module:function\n"


def test_validate_with_both_schema_and_template_is_a_usage_error(tmp_path, capsys):
    assert main(["validate", saved(tmp_path), "--schema", "s.json", "--template", "m:f"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "ckptschema validate: error: argument --template: not allowed with argument --schema"
    )


# ------------------------------------------------------------------------------ inspect

DEMO_INSPECT = """\
{path}: flax checkpoint, manifest version 1, blake3 checksums

PATH                   TYPE     SHAPE   PARAMS   SIZE
params                 dict                 26  104 B
params/Dense_0         dict                 16   64 B
params/Dense_0/kernel  float32  (3, 4)      12   48 B
params/Dense_0/bias    float32  (4,)         4   16 B
params/Dense_1         dict                 10   40 B
params/Dense_1/kernel  float32  (4, 2)       8   32 B
params/Dense_1/bias    float32  (2,)         2    8 B
step                   int 3

total: 4 tensors, 26 parameters, 104 B
"""


def test_inspect_prints_the_tree_with_totals_as_plain_text_when_piped(tmp_path, capsys):
    model = saved(tmp_path)
    assert main(["inspect", model]) == 0
    out = capsys.readouterr().out
    assert out == DEMO_INSPECT.format(path=model)
    assert "\x1b" not in out


def test_inspect_json_has_paths_and_totals(tmp_path, capsys):
    model = saved(tmp_path, tree={"layers": [{"w": np.zeros((2, 3), F32)}], "lr": 0.5})
    assert main(["inspect", model, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["tensors"], data["params"], data["nbytes"], data["framework"]) == (1, 6, 24, "flax")
    assert data["nodes"] == [
        {
            "path": "layers",
            "parts": ["layers"],
            "kind": "list",
            "type": "list",
            "tensors": 1,
            "params": 6,
            "nbytes": 24,
        },
        {
            "path": "layers/0",
            "parts": ["layers", 0],
            "kind": "dict",
            "type": "dict",
            "tensors": 1,
            "params": 6,
            "nbytes": 24,
        },
        {
            "path": "layers/0/w",
            "parts": ["layers", 0, "w"],
            "kind": "tensor",
            "key": "layers.0.w",
            "dtype": "float32",
            "shape": [2, 3],
            "tensors": 1,
            "params": 6,
            "nbytes": 24,
        },
        {"path": "lr", "parts": ["lr"], "kind": "scalar", "type": "float", "value": "0.5"},
    ]


def test_inspect_on_a_terminal_draws_a_rich_table(tmp_path):
    from rich.console import Console

    out = io.StringIO()
    Inventory.of(saved(tmp_path)).render(Console(file=out, force_terminal=True, width=100))
    text = out.getvalue()
    assert "\x1b[1m" in text
    assert "    kernel " in text
    assert text.endswith("total: 4 tensors, 26 parameters, 104 B\n")


def test_inspect_escapes_control_characters_in_keys(tmp_path, capsys):
    model = saved(tmp_path, tree={"evil\x1b[2J": np.zeros(1, F32)})
    assert main(["inspect", model]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "evil\\x1b[2J  float32" in out


def test_inspect_sizes_large_trees_in_binary_units(tmp_path, capsys):
    model = saved(tmp_path, tree={"w": np.zeros((512, 1024), F32)})
    main(["inspect", model])
    assert capsys.readouterr().out.splitlines()[-1] == "total: 1 tensor, 524,288 parameters, 2.0 MiB (2,097,152 bytes)"


# ------------------------------------------------------------------------------- schema


def test_schema_output_is_identical_across_runs(tmp_path, capsys):
    model = saved(tmp_path)
    main(["schema", model])
    first = capsys.readouterr().out
    main(["schema", model])
    assert capsys.readouterr().out == first
    assert first == ckptschema.read_manifest(model).schema_document()


def test_schema_written_with_output_matches_stdout(tmp_path, capsys):
    model = saved(tmp_path)
    main(["schema", model])
    out = tmp_path / "model.schema.json"
    assert main(["schema", model, "-o", str(out)]) == 0
    assert out.read_bytes() == capsys.readouterr().out.encode("utf-8")


def test_schema_holds_no_tensor_bytes(tmp_path, capsys):
    model = saved(tmp_path, tree={"w": np.ones((256, 1024), F32)})
    main(["schema", model])
    assert len(capsys.readouterr().out) < 1000  # the tensor is 1 MiB


def test_schema_to_an_unwritable_place_exits_2(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir.json"
    assert main(["schema", saved(tmp_path), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"ckptschema: error: {out}: cannot write (No such file or directory)\n"


def test_json_schema_is_the_committed_schema(capsys):
    committed = Path(__file__).parent.parent / "schemas" / "manifest-v1.schema.json"
    assert main(["json-schema"]) == 0
    assert capsys.readouterr().out == committed.read_text(encoding="utf-8")


def test_schema_structure_only_has_no_digests_or_values(tmp_path, capsys):
    assert main(["schema", saved(tmp_path), "--structure-only"]) == 0
    out = capsys.readouterr().out
    assert '  "/params/Dense_0/kernel": "float32[3,4]",' in out.splitlines()
    assert '  "/step": "int",' in out.splitlines() and "sha256:" not in out


def test_json_schema_of_the_schema_document_is_the_committed_schema(capsys):
    committed = Path(__file__).parent.parent / "schemas" / "schema-doc-v2.schema.json"
    assert main(["json-schema", "--schema-document"]) == 0
    assert capsys.readouterr().out == committed.read_text(encoding="utf-8")


def test_validate_against_a_committed_schema_document_passes(tmp_path, capsys):
    old = Path(__file__).parent / "data" / "model.schema.json"
    model = saved(tmp_path)
    assert main(["validate", model, "--schema", str(old)]) == 0
    assert main(["diff", str(old), model]) == 0
    assert capsys.readouterr().out == f"{model}: ok\n{old} vs {model}: no differences\n"


# ------------------------------------------------------------------ schemas from pipes


def _schema_text(model: str) -> bytes:
    return ckptschema.read_manifest(model).schema_document().encode()


def test_validate_reads_the_schema_from_stdin(tmp_path, capsys, monkeypatch):
    model = saved(tmp_path)
    changed = saved(tmp_path, "changed.safetensors", flax_like(kernel_shape=(4, 4)))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_schema_text(model))))
    assert main(["validate", changed, "--schema", "-"]) == 1
    assert capsys.readouterr().out == (
        f"{changed}: 1 problem\n  shape (1):\n    params/Dense_0/kernel: shape (4, 4) in file, (3, 4) in schema\n"
    )


def _fifo_with(tmp_path: Path, data: bytes) -> tuple[str, threading.Thread]:
    fifo = tmp_path / "schema.pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    return str(fifo), writer


def test_validate_reads_the_schema_from_a_pipe(tmp_path, capsys):
    model = saved(tmp_path)
    fifo, writer = _fifo_with(tmp_path, _schema_text(model))
    assert main(["validate", model, "--schema", fifo]) == 0
    writer.join()
    assert capsys.readouterr().out == f"{model}: ok\n"


def test_diff_reads_a_schema_from_a_pipe(tmp_path, capsys):
    a = saved(tmp_path)
    b = saved(tmp_path, "b.safetensors", {**flax_like(), "step": 5})
    fifo, writer = _fifo_with(tmp_path, _schema_text(a))
    assert main(["diff", fifo, b]) == 1
    writer.join()
    assert capsys.readouterr().out == f"{fifo} vs {b}: 1 difference\n  value     step: int 3 -> int 5\n"


def test_a_pipe_that_is_not_a_schema_exits_2(tmp_path, capsys):
    fifo, writer = _fifo_with(tmp_path, b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["inspect", fifo]) == 2
    writer.join()
    assert capsys.readouterr().err == (
        f"ckptschema: error: {fifo}: schema document is not valid JSON (Expecting value: line 1 column 1 (char 0))\n"
    )


def test_diff_cannot_read_stdin_twice(tmp_path, capsys):
    assert main(["diff", "-", "-"]) == 2
    assert capsys.readouterr().err == "ckptschema: error: diff: only one of A and B can be '-' (stdin)\n"


# ------------------------------------------------------------------------ markdown diff


def test_diff_markdown_counts_each_kind_and_lists_the_paths(tmp_path, capsys):
    new = flax_like(kernel_shape=(3, 5))
    new["params"]["Dense_2"] = {"bias": np.zeros(2, F32)}
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors", new)
    assert main(["diff", a, b, "--markdown"]) == 1
    assert capsys.readouterr().out == (
        f"### ckptschema diff: `{a}` → `{b}`\n\n"
        "**3 differences**: 1 added, 2 shape\n\n"
        "| change | path | A | B |\n"
        "|---|---|---|---|\n"
        "| shape | `params/Dense_0/kernel` | `(3, 4)` | `(3, 5)` |\n"
        "| shape | `params/Dense_0/bias` | `(4,)` | `(5,)` |\n"
        "| added | `params/Dense_2/bias` |  | `float32[2]` |\n"
    )


def test_diff_markdown_of_equal_files_says_so(tmp_path, capsys):
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors")
    assert main(["diff", a, b, "--markdown"]) == 0
    assert capsys.readouterr().out == f"### ckptschema diff: `{a}` → `{b}`\n\nNo differences.\n"


def test_diff_markdown_escapes_table_breaking_keys(tmp_path, capsys):
    a = saved(tmp_path, "a.safetensors", {"x|y\n`": np.zeros(1, F32)})
    b = saved(tmp_path, "b.safetensors", {})
    main(["diff", a, b, "--markdown"])
    assert capsys.readouterr().out.splitlines()[-1] == "| removed | `` x\\|y\\n` `` | `float32[1]` |  |"


# ------------------------------------------------------------- beside: the pre-commit hooks


def test_schema_beside_writes_each_schema_next_to_its_checkpoint_when_it_changed(tmp_path, capsys):
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors")
    (tmp_path / "b.schema.json").write_text(ckptschema.read_manifest(b).schema_document())
    assert main(["schema", a, b, "--beside"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'a.schema.json'}\n"
    assert (tmp_path / "a.schema.json").read_text() == ckptschema.read_manifest(a).schema_document()


def test_schema_of_several_files_needs_beside(tmp_path, capsys):
    assert main(["schema", saved(tmp_path), saved(tmp_path, "b.safetensors")]) == 2
    assert capsys.readouterr().err == (
        "ckptschema: error: schema: give one FILE, or --beside to write each FILE's schema next to it\n"
    )


def test_validate_beside_checks_each_file_against_the_schema_next_to_it(tmp_path, capsys):
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors")
    main(["schema", a, b, "--beside"])
    saved(tmp_path, "b.safetensors", {**flax_like(), "step": 4})
    capsys.readouterr()
    assert main(["validate", a, b, "--beside"]) == 1
    assert capsys.readouterr().out == (
        f"{a}: ok\n{b}: 1 problem\n  value (1):\n    step: value int 4 in file, int 3 in schema\n"
    )


def test_validate_beside_without_a_schema_says_how_to_write_it(tmp_path, capsys):
    model = saved(tmp_path)
    schema = tmp_path / "model.schema.json"
    assert main(["validate", model, "--beside"]) == 2
    assert capsys.readouterr().err == (
        f"ckptschema: error: {schema}: no such schema beside {model}; "
        f"write it with: ckptschema schema {model} -o {schema}\n"
    )


# ------------------------------------------------------------------ stable --json reports


def test_validate_json_keys_are_stable(tmp_path, capsys):
    schema = str(tmp_path / "model.schema.json")
    main(["schema", saved(tmp_path), "-o", schema])
    changed = saved(tmp_path, "changed.safetensors", flax_like(kernel_shape=(4, 4)))
    capsys.readouterr()
    main(["validate", changed, "--schema", schema, "--json"])
    assert json.loads(capsys.readouterr().out) == {
        "source": changed,
        "ok": False,
        "issues": [
            {
                "kind": "shape",
                "path": "params/Dense_0/kernel",
                "found": "(4, 4)",
                "expected": "(3, 4)",
                "against": "schema",
                "parts": ["params", "Dense_0", "kernel"],
                "found_value": [4, 4],
                "expected_value": [3, 4],
            }
        ],
    }


def test_validate_json_of_several_files_is_an_array(tmp_path, capsys):
    a, b = saved(tmp_path, "a.safetensors"), saved(tmp_path, "b.safetensors")
    assert main(["validate", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"source": a, "ok": True, "issues": []},
        {"source": b, "ok": True, "issues": []},
    ]


def test_diff_json_of_a_manifest_field_and_a_checksum(tmp_path, capsys):
    a = saved(tmp_path, "a.safetensors")
    b = str(tmp_path / "b.safetensors")
    tree = flax_like()
    tree["params"]["Dense_1"]["bias"] = np.ones(2, F32)
    ckptschema.save(b, tree)
    assert main(["diff", a, b, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["differences"] == [
        {"change": "framework", "path": "<manifest>", "a": "flax", "b": "jax"},
        {
            "change": "checksum",
            "path": "params/Dense_1/bias",
            "a": digest(np.zeros(2, F32))[:12],
            "b": digest(np.ones(2, F32))[:12],
        },
    ]


# ------------------------------------------------------------------------ the docs


def test_ci_docs_show_what_the_commands_print():
    from .ci_examples import DOCS, PAGES, examples, render

    found = examples()
    for name in PAGES:
        page = (DOCS / name).read_text(encoding="utf-8")
        assert render(page, found) == page, f"docs/{name} is stale: run PYTHONPATH=. python tests/ci_examples.py"


# ------------------------------------------------------------------------------- errors


def test_missing_file_exits_2_with_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.safetensors")
    assert main(["inspect", missing]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"ckptschema: error: {missing}: cannot open (No such file or directory)\n",
    )


def test_non_safetensors_file_exits_2_without_traceback(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"these are not the weights you are looking for\n")
    assert main(["validate", str(junk)]) == 2
    assert capsys.readouterr().err == (
        f"ckptschema: error: {junk}: header of 8241904413164529780 bytes exceeds MAX_HEADER_BYTES=100000000\n"
    )


def test_plain_safetensors_file_has_no_schema(tmp_path, capsys):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(2, F32)}, str(plain))
    assert main(["schema", str(plain)]) == 2
    assert capsys.readouterr().err == (
        f"ckptschema: error: {plain}: no ckptschema manifest in the header (a plain safetensors file)\n"
    )


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "ckptschema: error: the following arguments are required: COMMAND"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ckptschema {ckptschema.__version__}\n"


# -------------------------------------------------------------------- progress (the API)


def test_save_and_load_with_progress_print_nothing_when_not_a_terminal(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, flax_like(), progress=True)
    loaded = ckptschema.load(path, progress=True)
    assert np.array_equal(loaded["params"]["Dense_1"]["kernel"], np.full((4, 2), 0.5, F32))
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------- subprocesses


def _env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TERM": "xterm-256color", "COLUMNS": "100"}


def _installed() -> str:
    found = shutil.which("ckptschema", path=os.path.dirname(sys.executable))
    assert found is not None, "the ckptschema console script is not installed next to the interpreter"
    return found


def _on_terminal(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run `argv` with stderr on a pseudo-terminal; return its exit code, stdout and what the terminal got."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=_env(), cwd=cwd, timeout=120
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the terminal has no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.returncode, proc.stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_installed_entry_point_validates_against_a_schema(tmp_path):
    model = saved(tmp_path)
    schema = str(tmp_path / "model.schema.json")
    main(["schema", model, "-o", schema])
    proc = subprocess.run(
        [_installed(), "validate", model, "--schema", schema], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{model}: ok\n", "")


@pytest.mark.slow
def test_python_dash_m_is_the_same_program(tmp_path):
    a = saved(tmp_path, "a.safetensors")
    b = saved(tmp_path, "b.safetensors", flax_like(kernel_shape=(4, 4)))
    proc = subprocess.run(
        [sys.executable, "-m", "ckptschema", "diff", a, b], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1,
        f"{a} vs {b}: 1 difference\n  shape     params/Dense_0/kernel: (3, 4) -> (4, 4)\n",
        "",
    )


@pytest.mark.slow
def test_validate_deep_draws_a_progress_bar_on_a_terminal(tmp_path):
    model = saved(tmp_path)
    code, out, terminal = _on_terminal([_installed(), "validate", model, "--deep"], tmp_path)
    assert (code, out) == (0, f"{model}: ok\n")
    assert "verifying model.safetensors" in terminal
    assert "104/104 bytes" in terminal


@pytest.mark.slow
def test_save_and_load_with_progress_draw_bars_on_a_terminal(tmp_path):
    script = (
        "import numpy as np, ckptschema\n"
        "ckptschema.save('big.safetensors', {'w': np.ones((1024, 1024), np.float32)}, progress=True)\n"
        "print(ckptschema.load('big.safetensors', progress=True)['w'].shape)\n"
    )
    code, out, terminal = _on_terminal([sys.executable, "-c", script], tmp_path)
    assert (code, out) == (0, "(1024, 1024)\n")
    assert "saving big.safetensors" in terminal
    assert "loading big.safetensors" in terminal
    assert "4.0/4.0 MiB" in terminal


@pytest.mark.slow
def test_installed_entry_point_reads_the_schema_from_stdin_and_from_a_pipe(tmp_path):
    model = saved(tmp_path)
    cli = _installed()
    script = f"{cli} schema {model} | {cli} validate {model} --schema - && {cli} diff <({cli} schema {model}) {model}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines()[0] == f"{model}: ok"
    assert proc.stdout.splitlines()[1].endswith(f" vs {model}: no differences")


# --------------------------------------------------------------------- CI integrations

ROOT = Path(__file__).parent.parent


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=60, check=True)
    return proc.stdout


def _sample_repository(path: Path) -> Path:
    """A git repository that commits its weights with the schema beside them."""
    path.mkdir()
    _git(path, "init", "-q")
    model = saved(path, "model.safetensors")
    assert main(["schema", model, "--beside"]) == 0
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "weights and their schema")
    return path


def _hook_repository(path: Path) -> Path:
    """This project as a git repository of its own, as pre-commit clones one."""
    path.mkdir()
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(ROOT / "ckptschema", path / "ckptschema", ignore=shutil.ignore_patterns("__pycache__"))
    _git(path, "init", "-q")
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "hooks")
    return path


@pytest.mark.slow
def test_pre_commit_hooks_run_with_try_repo_on_a_sample_repository(tmp_path):
    """Both hooks in one `try-repo` run, which orders them by id (each run pip-installs the package afresh)."""
    hooks = _hook_repository(tmp_path / "hooks")
    sample = _sample_repository(tmp_path / "sample")
    main(["schema", saved(sample, "b.safetensors"), "--beside"])
    saved(sample, "b.safetensors", {**flax_like(), "step": 4})  # re-trained after its schema was reviewed
    _git(sample, "add", "-A")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the hooks run the package pre-commit installs
    argv = [sys.executable, "-m", "pre_commit", "try-repo", str(hooks), "--all-files", "--color=never"]
    proc = subprocess.run(
        argv, cwd=sample, capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"}, timeout=900
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "weights match the schema beside them....." in out and "the schema beside each checkpoint is current" in out
    assert "b.safetensors: 1 problem\n  value (1):\n    step: value int 4 in file, int 3 in schema\n" in out
    assert "model.safetensors: ok\n" in out
    assert "- files were modified by this hook" in out and "wrote b.schema.json" in out
    assert (sample / "b.schema.json").read_text() == ckptschema.read_manifest(
        sample / "b.safetensors"
    ).schema_document()


@pytest.mark.slow
def test_github_actions_recipe_runs_on_a_sample_repository(tmp_path):
    import yaml

    recipe = yaml.safe_load((ROOT / "examples" / "github-actions" / "validate-weights.yml").read_text())
    steps = [step for step in recipe["jobs"]["validate"]["steps"] if "run" in step]
    assert steps[0]["run"] == "pip install ckptschema"  # installed here already
    repo = _sample_repository(tmp_path / "repo")
    base = _git(repo, "rev-parse", "HEAD").strip()
    new = flax_like(kernel_shape=(3, 5))
    new["params"]["Dense_2"] = {"bias": np.zeros(2, F32)}
    assert main(["schema", saved(repo, "model.safetensors", new), "--beside"]) == 0
    _git(repo, "commit", "-qam", "a wider first layer, and a third one")
    summary = tmp_path / "summary.md"
    env = {
        **_env(),
        "PATH": f"{os.path.dirname(_installed())}:{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
    }

    def run_step(step: dict) -> subprocess.CompletedProcess[str]:
        script = step["run"].replace("${{ github.event.pull_request.base.sha }}", base)
        assert "${{" not in script
        argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]
        return subprocess.run(argv, cwd=repo, capture_output=True, text=True, env=env, timeout=300)

    for step in steps[1:]:
        proc = run_step(step)
        assert proc.returncode == 0, (step["name"], proc.stdout, proc.stderr)
    assert summary.read_text().splitlines()[:3] == [
        "### ckptschema diff: `base.schema.json` → `model.schema.json`",
        "",
        "**3 differences**: 1 added, 2 shape",
    ]
    saved(repo, "model.safetensors", {**new, "step": 4})  # weights that are not the reviewed ones
    assert run_step(steps[1]).returncode == 1
