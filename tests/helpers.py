"""Exact tree equality for tests: containers, key order and types, dtypes, shapes, bits."""

from __future__ import annotations

import struct
from typing import Any

import jax
import numpy as np


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def assert_same_tree(got: Any, want: Any, *, same_classes: bool = True, path: str = "") -> None:
    """Assert two trees are identical to the bit.

    Args:
        got: the loaded tree.
        want: the saved tree.
        same_classes: require the very same namedtuple classes (true with a template);
            otherwise a namedtuple must match by name and fields (template-less loads
            recreate the class from the manifest).
    """
    where = path or "<root>"
    if _is_namedtuple(want):
        assert _is_namedtuple(got), f"{where}: {type(got).__name__} is not a namedtuple"
        if same_classes:
            assert type(got) is type(want), f"{where}: {type(got)} is not {type(want)}"
        else:
            assert (type(got).__name__, got._fields) == (type(want).__name__, want._fields), where
        assert len(got) == len(want), where
        for f, g, w in zip(want._fields, got, want):
            assert_same_tree(g, w, same_classes=same_classes, path=f"{path}/{f}")
    elif type(want) in (list, tuple):
        assert type(got) is type(want), f"{where}: {type(got).__name__} is not {type(want).__name__}"
        assert len(got) == len(want), f"{where}: length {len(got)} is not {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, same_classes=same_classes, path=f"{path}/{i}")
    elif isinstance(want, dict):
        assert type(got) is type(want), f"{where}: {type(got).__name__} is not {type(want).__name__}"
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_same_tree(got[k], want[k], same_classes=same_classes, path=f"{path}/{k}")
    elif want is None or type(want) in (bool, int, float, str):
        assert type(got) is type(want), f"{where}: {type(got).__name__} is not {type(want).__name__}"
        if type(want) is float:  # every bit: NaN sign and payload too
            assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} has other bits than {want!r}"
        else:
            assert got == want, f"{where}: {got!r} is not {want!r}"
    else:
        assert_same_array(got, want, where)


def assert_same_array(got: Any, want: Any, where: str = "<root>") -> None:
    """Same dtype, shape and bytes; a jax.Array unless JAX cannot hold the dtype."""
    want_np = np.asarray(want)
    got_np = np.asarray(got)
    assert got_np.dtype == want_np.dtype, f"{where}: dtype {got_np.dtype} is not {want_np.dtype}"
    assert got_np.shape == want_np.shape, f"{where}: shape {got_np.shape} is not {want_np.shape}"
    assert got_np.tobytes() == want_np.tobytes(), f"{where}: bits differ"
    assert isinstance(got, (jax.Array, np.ndarray, np.generic)), f"{where}: {type(got)}"
