"""What the package imports and declares: the core imports no framework, framework adapters load
on demand or say which extra is missing, and the declared dependencies are the imported ones.

Each import test runs a fresh interpreter, since this process has already imported the frameworks.
"""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import ckptschema

FRAMEWORKS = ("flax", "haiku", "objax", "optax", "equinox")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ckptschema"
#: Distributions whose import name differs from their name.
_DISTRIBUTION = {"haiku": "dm-haiku", "orbax": "orbax-checkpoint"}
_FRAMEWORK_DISTRIBUTIONS = {"flax", "dm-haiku", "objax", "orbax-checkpoint", "equinox", "optax"}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


def _blocking(*modules: str) -> str:
    """Code that makes importing `modules` fail as it does when they are not installed."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


@pytest.mark.slow
def test_import_and_plain_round_trip_leave_frameworks_unimported(tmp_path):
    result = _run(
        f"""
        import sys, numpy as np, ckptschema
        path = {str(tmp_path / "m.safetensors")!r}
        ckptschema.save(path, {{"w": np.ones(2, np.float32), "step": 3}})
        ckptschema.load(path, template={{"w": np.ones(2, np.float32), "step": 0}})
        print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.framework
def test_manifest_naming_flax_container_loads_adapter_on_demand(tmp_path):
    from flax.core import freeze

    import ckptschema

    ckptschema.save(tmp_path / "m.safetensors", freeze({"params": {"w": __import__("numpy").ones(2, "float32")}}))
    result = _run(
        f"""
        import sys, ckptschema
        tree = ckptschema.load({str(tmp_path / "m.safetensors")!r})
        print(type(tree).__name__, "ckptschema.flax" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "FrozenDict True"


@pytest.mark.slow
def test_missing_extras_name_the_extra_to_install():
    result = _run(
        _blocking("flax", "objax")
        + textwrap.dedent(
            """
            for name in ("flax", "objax"):
                try:
                    __import__(f"ckptschema.{name}")
                except ImportError as e:
                    print(str(e).rpartition("; ")[2])
            """
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "install it with: pip install 'ckptschema[flax]'",
        "install it with: pip install 'ckptschema[objax]'",
    ]


@pytest.mark.slow
@pytest.mark.framework
def test_loading_flax_manifest_without_flax_names_the_extra(tmp_path):
    import numpy as np
    from flax.core import freeze

    import ckptschema

    ckptschema.save(tmp_path / "m.safetensors", freeze({"w": np.ones(2, np.float32)}))
    result = _run(
        _blocking("flax")
        + textwrap.dedent(
            f"""
            import ckptschema
            try:
                ckptschema.load({str(tmp_path / "m.safetensors")!r})
            except ckptschema.CkptSchemaError as e:
                print(str(e).rpartition("; ")[2])
            """
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "install it with: pip install 'ckptschema[flax]'"


@pytest.mark.slow
def test_import_alone_loads_no_framework_and_not_the_safetensors_bindings():
    result = _run(
        f"""
        import sys, ckptschema
        print(sorted(m for m in (*{FRAMEWORKS!r}, "orbax", "safetensors", "fsspec") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imported_distributions() -> set[str]:
    found = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.partition(".")[0] for m in modules} - {"ckptschema", "__future__"}:
                if top not in sys.stdlib_module_names:
                    found.add(_name(_DISTRIBUTION.get(top, top)))
    return found


def test_runtime_dependencies_are_what_the_package_imports():
    project = _pyproject()["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for group in project["optional-dependencies"].values() for r in group}
    imported = _imported_distributions()
    assert runtime <= imported, f"declared but never imported: {sorted(runtime - imported)}"
    assert imported - runtime <= extras, f"imported but not declared: {sorted(imported - runtime - extras)}"
    assert "safetensors" not in runtime


def _group(groups: dict, name: str) -> set[str]:
    names = set()
    for item in groups[name]:
        names |= _group(groups, item["include-group"]) if isinstance(item, dict) else {_name(item)}
    return names


def test_the_core_tox_env_installs_no_framework():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    core = tox["testenv:core"]
    assert core.get("extras", "").strip() == ""
    groups = _pyproject()["dependency-groups"]
    installed = set().union(*(_group(groups, g.strip()) for g in core["dependency_groups"].split(",")))
    assert "pytest" in installed and not installed & _FRAMEWORK_DISTRIBUTIONS


def test_the_package_is_typed_and_its_version_written_once():
    assert (PACKAGE / "py.typed").is_file()
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", ckptschema.__version__)


#: The byte layer: safetensors bytes, files, shards, URLs. It knows no manifest models.
_BYTE_LAYER = (
    "ckptschema._sources",
    "ckptschema._header",
    "ckptschema._tensors",
    "ckptschema._shards",
    "ckptschema._shard_index",
    "ckptschema._remote",
    "ckptschema._atomic",
    "ckptschema._blocks",
)


def _package_imports() -> dict[str, set[str]]:
    """Each ``ckptschema/*.py`` module and what it imports, at the top or in a function.

    A package module is named ``ckptschema.<file stem>`` (``ckptschema.__init__`` for ``import
    ckptschema``), a third-party module by its top-level name.
    """
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found = graph.setdefault(f"ckptschema.{path.stem}", set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = "ckptschema." + (node.module or "") if node.level else node.module or ""
                names = [base + alias.name for alias in node.names] if base == "ckptschema." else [base]
            else:
                continue
            for name in names:
                parts = name.strip(".").split(".")
                if parts[0] != "ckptschema":
                    found.add(parts[0])
                elif len(parts) == 1 or not (PACKAGE / f"{parts[1]}.py").is_file():
                    found.add("ckptschema.__init__")
                else:
                    found.add(f"ckptschema.{parts[1]}")
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for name in graph.get(stack.pop(), set()) - seen:
            seen.add(name)
            stack.append(name)
    return seen


def test_the_package_modules_import_each_other_without_a_cycle():
    graph = _package_imports()
    cycles = sorted(m for m in graph if m in _reachable({k: v & graph.keys() for k, v in graph.items()}, m))
    assert cycles == []


@pytest.mark.parametrize("module", _BYTE_LAYER)
def test_the_byte_layer_imports_neither_pydantic_nor_the_manifest_models(module):
    reached = _reachable(_package_imports(), module)
    assert sorted(reached & {"pydantic", "ckptschema._manifest"}) == []
