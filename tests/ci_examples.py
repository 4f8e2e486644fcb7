"""The command output shown in docs/ci.md and docs/cli.md, produced by running the commands.

Each block the docs show is preceded by ``<!-- generated: NAME -->``; `render` fills the
fenced block after it with the output of example NAME. A test checks the docs are current;
after changing the output, rewrite them with::

    PYTHONPATH=. python tests/ci_examples.py
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import ckptschema
from ckptschema.cli import main

DOCS = Path(__file__).parent.parent / "docs"
PAGES = ("ci.md", "cli.md")
_BLOCK = re.compile(r"(<!-- generated: (\S+) -->\n```\w*\n)(.*?)(^```$)", re.DOTALL | re.MULTILINE)


def model(classes: int = 2, step: int = 1000, norm: bool = False) -> dict:
    """A small classifier's variables, with the same values on every machine."""

    def ramp(*shape: int) -> np.ndarray:
        return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 7 - 3) / 8

    params = {
        "Dense_0": {"kernel": ramp(4, 8), "bias": np.zeros(8, np.float32)},
        "Dense_1": {"kernel": ramp(8, classes), "bias": np.zeros(classes, np.float32)},
    }
    if norm:
        params["LayerNorm_0"] = {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}
    return {"params": params, "step": step}


@contextlib.contextmanager
def _stdin(data: bytes | None) -> Iterator[None]:
    saved = sys.stdin
    if data is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    try:
        yield
    finally:
        sys.stdin = saved


def _run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), _stdin(stdin):
        code = main(argv)
    return code, out.getvalue()


def _session(*commands: str, stdin: bytes | None = None) -> str:
    """Console text: each command after ``$``, its output, and ``echo $?`` when it failed."""
    lines = []
    for command in commands:
        code, out = _run(command.split()[1:], stdin)
        lines.append(f"$ {command}\n{out}")
        if code:
            lines.append(f"$ echo $?\n{code}\n")
    return "".join(lines)


def examples() -> dict[str, str]:
    """Every example's output, from commands run in a fresh directory."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            ckptschema.save("model.safetensors", model(), framework="flax")
            ckptschema.save("new-model.safetensors", model(classes=3, norm=True), framework="flax")
            _run(["schema", "model.safetensors", "-o", "model.schema.json"])
            _run(["schema", "new-model.safetensors", "-o", "new.schema.json"])
            old, new = Path("model.schema.json").read_text(), Path("new.schema.json").read_text()
            review = difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), "a/model.schema.json", "b/model.schema.json"
            )
            piped = _run(["schema", "model.safetensors"])[1].encode()
            return {
                "schema": _session("ckptschema schema model.safetensors -o model.schema.json")
                + f"$ cat model.schema.json\n{old}",
                "structure-only": _session("ckptschema schema model.safetensors --structure-only"),
                "review": "".join(review),
                "diff": _session("ckptschema diff model.schema.json new-model.safetensors"),
                "markdown": _run(["diff", "model.schema.json", "new.schema.json", "--markdown"])[1],
                "validate": _session(
                    "ckptschema validate model.safetensors --schema model.schema.json --deep",
                    "ckptschema validate new-model.safetensors --schema model.schema.json",
                ),
                "stdin": _session("ckptschema validate model.safetensors --schema -", stdin=piped),
                "validate-json": _session(
                    "ckptschema validate new-model.safetensors --schema model.schema.json --json"
                ),
                "diff-json": _session("ckptschema diff model.schema.json new.schema.json --json"),
            }
        finally:
            os.chdir(cwd)


def render(page: str, outputs: dict[str, str]) -> str:
    """`page` with every generated block replaced by its example's output."""
    return _BLOCK.sub(lambda m: m.group(1) + outputs[m.group(2)] + m.group(4), page)


if __name__ == "__main__":
    found = examples()
    for name in PAGES:
        path = DOCS / name
        path.write_text(render(path.read_text(encoding="utf-8"), found), encoding="utf-8")
