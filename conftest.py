"""Shared test configuration (tests and the package doctests): Hypothesis profiles, doctest fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# 'ci' is what tox and .ci/run use: hundreds of examples per property.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _doctest_tmp_path(doctest_namespace: dict, tmp_path) -> None:
    """Docstring examples write their files under `tmp_path`, like tests do."""
    doctest_namespace["tmp_path"] = tmp_path


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# The tox 'core' env installs no framework, to prove the core needs none. Modules that are
# about a framework cannot even be imported there, so they are not collected (their
# tests carry the 'framework' marker, which that env deselects as well). Modules whose
# examples need an extra are not collected without it either.
collect_ignore = [
    path
    for path, module in [
        ("ckptschema/flax.py", "flax"),
        ("ckptschema/objax.py", "objax"),
        ("ckptschema/haiku.py", "haiku"),
        ("tests/test_flax.py", "flax"),
        ("tests/test_haiku.py", "haiku"),
        ("tests/test_objax.py", "objax"),
        ("tests/test_optax_equinox.py", "equinox"),
        ("tests/test_penzai.py", "penzai"),
        ("tests/test_format_doc.py", "flax"),
        ("examples/demo.py", "flax"),
        ("ckptschema/_remote.py", "fsspec"),  # its examples write to memory:// (the [s3] extra)
    ]
    if _missing(module)
]
