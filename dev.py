"""Bootstrap for a fresh machine that has only Python 3.11: the README's two commands.

    python3.11 dev.py demo    # install into .venv, then save, inspect, validate, load a model
    python3.11 dev.py test    # the whole suite: tox (tests, core-only tests, lint, types, docs)

Each creates the virtual environment it needs on first use and reuses it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _venv(name: str, *requirements: str) -> Path:
    path = ROOT / name
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {name} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(path)
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *requirements], check=True, cwd=ROOT)
    return python


def main(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:
        python = _venv(".venv", "-e", ".[all]")
        return subprocess.run([python, "examples/demo.py", *argv[1:]], cwd=ROOT).returncode
    if argv[:1] == ["test"]:
        python = _venv(".venv-tox", "tox>=4.22")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([python, "-m", "tox", *argv[1:]], cwd=ROOT, env=env).returncode
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
