"""The core imports no framework; framework adapters load on demand or say which extra is missing.

Each test runs a fresh interpreter, since this process has already imported the frameworks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("flax", "haiku", "objax", "optax", "equinox")


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
