"""Format version 1 is frozen: the committed golden files load exactly and are written again byte for byte.

The files under ``tests/data/golden/v1/`` were written by ``tests/make_golden.py`` from the
trees of ``tests/golden_trees.py``. A failure here means this code reads or writes format
version 1 differently from the release that wrote them: fix the code, or, for a deliberate
format change, bump the manifest version and add a new golden set.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import ckptschema
from tests.golden_trees import GOLDEN, GOLDEN_DIR, Golden, by_name
from tests.helpers import assert_same_array
from tests.make_golden import write

#: The random part of a shard's name (`model-00001-of-00005-<token>.safetensors`), new on every save.
_SHARD_TOKEN = re.compile(rb"(model-\d{5}-of-\d{5}-)[0-9a-f]{8}(\.safetensors)")

_CHANGED = (
    "format version 1 changed: {what}. Files that a release wrote must stay readable and "
    "be written the same forever. If the change is deliberate, it needs a new manifest version "
    "and a new golden set; only a change to version 1 that no release has written yet may "
    "regenerate these files, with `python tests/make_golden.py --force`."
)


def _param(golden: Golden) -> Any:
    marks = []
    if golden.needs:
        marks = [
            pytest.mark.framework,
            pytest.mark.skipif(not golden.available, reason=f"needs {', '.join(golden.needs)}"),
        ]
    return pytest.param(golden, id=golden.path().name, marks=marks)


ALL = [_param(g) for g in GOLDEN]
REBUILT_WITHOUT_TEMPLATE = [_param(g) for g in GOLDEN if not g.needs_template]
NEEDING_TEMPLATE = [_param(g) for g in GOLDEN if g.needs_template]


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _assert_identical(got: Any, want: Any, path: str = "") -> None:
    """Assert two trees are the same to the bit, framework containers and typed PRNG keys included.

    `tests.helpers.assert_same_tree` covers plain containers; the golden trees also hold
    FrozenDicts, nnx States and Variables, objax variables, equinox Modules and key arrays.
    """
    where = path or "<root>"
    if want is None or type(want) in (bool, int, float, str):
        assert type(got) is type(want), f"{where}: {type(got).__name__} is not {type(want).__name__}"
        if type(want) is float:
            assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} has other bits than {want!r}"
        else:
            assert got == want, f"{where}: {got!r} is not {want!r}"
    elif _is_key(want):
        assert _is_key(got), f"{where}: {type(got).__name__} is not a typed PRNG key"
        assert str(jax.random.key_impl(got)) == str(jax.random.key_impl(want)), where
        assert_same_array(jax.random.key_data(got), jax.random.key_data(want), where)
    elif isinstance(want, (jax.Array, np.ndarray, np.generic)):
        assert_same_array(got, want, where)
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want), f"{where}: {type(got)} is not {type(want)}"
        assert len(got) == len(want), f"{where}: length {len(got)} is not {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_identical(g, w, f"{path}/{getattr(want, '_fields', range(len(want)))[i]}")
    elif isinstance(want, Mapping):
        assert type(got) is type(want), f"{where}: {type(got)} is not {type(want)}"
        keys = [(type(k), k) for k in got.keys()]
        assert keys == [(type(k), k) for k in want.keys()], f"{where}: keys {list(got.keys())} != {list(want.keys())}"
        for k in want.keys():
            _assert_identical(got[k], want[k], f"{path}/{k}")
    else:
        _assert_same_node(got, want, where)


def _assert_same_node(got: Any, want: Any, where: str) -> None:
    """Any other node: same class and JAX treedef one level down (metadata included), same children."""
    assert type(got) is type(want), f"{where}: {type(got)} is not {type(want)}"
    children, treedef = jax.tree_util.tree_flatten(want, is_leaf=lambda x: x is not want)
    got_children, got_treedef = jax.tree_util.tree_flatten(got, is_leaf=lambda x: x is not got)
    if len(children) == 1 and children[0] is want:  # not a pytree node: a variable holding one value (objax)
        _assert_identical(got.value, want.value, where)
        return
    assert got_treedef == treedef, f"{where}: {got_treedef} is not {treedef}"
    for i, (g, w) in enumerate(zip(got_children, children)):
        _assert_identical(g, w, f"{where}/{i}")


def _files(path: Path) -> dict[str, bytes]:
    """Every file of a golden file or sharded directory, by name, with the shard token blanked."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return {
        _SHARD_TOKEN.sub(rb"\1TOKEN\2", f.name.encode()).decode(): _SHARD_TOKEN.sub(rb"\1TOKEN\2", f.read_bytes())
        for f in files
    }


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("golden", REBUILT_WITHOUT_TEMPLATE)
def test_golden_file_loads_without_a_template_as_its_tree(golden):
    _assert_identical(ckptschema.load(golden.path()), golden.build())


@pytest.mark.parametrize("golden", NEEDING_TEMPLATE)
def test_golden_file_of_a_custom_node_asks_for_a_template_when_loaded_without_one(golden):
    with pytest.raises(ckptschema.CkptSchemaError, match="only rebuilds through a template; pass template="):
        ckptschema.load(golden.path())


@pytest.mark.parametrize("golden", ALL)
def test_golden_file_loads_with_its_tree_as_template(golden):
    tree = golden.build()
    _assert_identical(ckptschema.load(golden.path(), template=tree), tree)


@pytest.mark.parametrize("golden", ALL)
def test_saving_a_golden_tree_writes_its_golden_file_byte_for_byte(golden, tmp_path):
    want = _files(golden.path())
    got = _files(golden.save(tmp_path))
    assert sorted(got) == sorted(want), _CHANGED.format(
        what=f"{golden.name} is saved as files {sorted(got)}, not {sorted(want)}"
    )
    for name, data in want.items():
        assert got[name] == data, _CHANGED.format(
            what=f"{name} of {golden.name} is written with other bytes ({len(got[name])} bytes, not {len(data)}; "
            f"first difference at byte {_first_difference(got[name], data)})"
        )


@pytest.mark.parametrize("golden", ALL)
def test_golden_file_validates_deep(golden):
    report = ckptschema.validate(golden.path(), deep=True)
    assert report.ok, str(report)


def test_golden_directory_holds_exactly_the_golden_files_and_readme():
    names = {p.name for p in GOLDEN_DIR.iterdir()}
    assert names == {g.path().name for g in GOLDEN} | {"README.md"}


def test_golden_files_stay_small():
    total = sum(f.stat().st_size for f in GOLDEN_DIR.rglob("*") if f.is_file())
    assert total < 300_000


def test_make_golden_refuses_to_overwrite_golden_files_without_force(tmp_path):
    write(tmp_path, [by_name["tensors"]])
    before = (tmp_path / "tensors.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit) as raised:
        write(tmp_path, [by_name["tensors"]])
    assert str(raised.value) == (
        f"{tmp_path}: 1 golden files exist (such as tensors.safetensors); they pin format version 1 and are "
        "never regenerated by accident. After a deliberate format change that no release has written yet, "
        "run again with --force"
    )
    assert (tmp_path / "tensors.safetensors").stat().st_mtime_ns == before
