"""Skeleton -> pytree: the tree a file describes, and a tree of a template's own types."""

from __future__ import annotations

import collections
import dataclasses
import sys
import types

import jax
import numpy as np
import pytest

from ckptschema import CkptSchemaError
from ckptschema._flatten import flatten, flatten_template
from ckptschema._rebuild import build_like_template, build_tree

Pair = collections.namedtuple("Pair", "first second")


def _loaded(tree):
    flat = flatten(tree)
    return build_tree(flat.skeleton, [flat.leaves[n["key"]] for n in flat.tensors])


def test_build_tree_is_the_inverse_of_flatten():
    w = np.arange(3, dtype=np.int8)
    loaded = _loaded({"a": [1, (2.5, None)], "b": Pair("x", {}), "w": w})
    assert type(loaded["a"][1]) is tuple and loaded["a"] == [1, (2.5, None)]
    assert type(loaded["b"]) is Pair and loaded["b"]._asdict() == {"first": "x", "second": {}}
    assert loaded["w"] is w


def test_build_tree_fills_tensors_in_walk_order():
    tensor = {"kind": "tensor", "key": "k", "dtype": "int8", "shape": []}
    skeleton = {
        "kind": "dict",
        "type": None,
        "keys": ["b", "a"],
        "children": [tensor, {"kind": "list", "children": [tensor]}],
    }
    assert build_tree(skeleton, ["first", "second"]) == {"b": "first", "a": ["second"]}


def test_build_tree_refuses_a_custom_node_without_a_template():
    with pytest.raises(CkptSchemaError, match="only rebuilds through a template; pass template="):
        build_tree({"kind": "node", "type": "m.State", "keys": [], "children": []}, [])


def test_namedtuple_loads_as_its_own_class_when_its_module_is_imported():
    assert type(_loaded(Pair(None, 1))) is Pair


def test_namedtuple_of_a_module_not_imported_is_a_fresh_class_and_nothing_is_imported():
    node = {**flatten(Pair(None, None)).skeleton, "module": "ckpt_never_imported_module"}
    loaded = build_tree(node, [])
    assert type(loaded) is not Pair and (type(loaded).__name__, loaded._fields) == ("Pair", ("first", "second"))
    assert "ckpt_never_imported_module" not in sys.modules


def test_namedtuple_whose_fields_differ_from_the_imported_class_is_a_fresh_class():
    node = {**flatten(Pair(None, None)).skeleton, "fields": ["second", "first"]}
    assert type(build_tree(node, [])) is not Pair


def test_namedtuple_named_after_a_class_that_is_not_a_namedtuple_is_a_fresh_class():
    node = {"kind": "namedtuple", "name": "OrderedDict", "fields": [], "children": [], "module": "collections"}
    assert type(build_tree(node, [])) is not collections.OrderedDict


def test_namedtuple_in_a_module_object_that_is_not_a_plain_module_is_not_looked_up():
    class Lazy(types.ModuleType):
        pass

    lazy = Lazy("ckpt_lazy_module")
    lazy.Pair = collections.namedtuple("Pair", "first second", module="ckpt_lazy_module")
    sys.modules["ckpt_lazy_module"] = lazy
    try:
        node = {**flatten(lazy.Pair(None, None)).skeleton}
        assert node["module"] == "ckpt_lazy_module"
        assert type(build_tree(node, [])) is not lazy.Pair
    finally:
        del sys.modules["ckpt_lazy_module"]


# ------------------------------------------------------------------------ like a template


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
    step: int
    params: dict


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Childless:
    pass


Other = collections.namedtuple("Other", "first second")


def test_build_like_template_fills_the_template_leaves_in_order_with_the_template_types():
    template = collections.OrderedDict(p=Pair(Other(0, 0), State(0, {"w": 0})), q=[0])
    built = build_like_template(flatten_template(template), [1, 2, 3, 4, 5])
    assert type(built) is collections.OrderedDict and list(built) == ["p", "q"]
    assert type(built["p"]) is Pair and type(built["p"].first) is Other
    assert built["p"].first._asdict() == {"first": 1, "second": 2}
    assert type(built["p"].second) is State and (built["p"].second.step, built["p"].second.params) == (3, {"w": 4})
    assert built["q"] == [5]


def test_pytree_node_without_children_is_rebuilt_through_its_template():
    assert build_like_template(flatten_template({"e": Childless()}), []) == {"e": Childless()}
