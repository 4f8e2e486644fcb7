"""The tree walker: skeletons, tensor keys, and what it refuses before anything is written."""

from __future__ import annotations

import collections
import dataclasses
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckptschema import CkptSchemaError
from ckptschema._tree import describe, flatten, iter_nodes, keypath, rebuild, unflatten

Pair = collections.namedtuple("Pair", "first second")


def test_keypath_joins_parts_with_slash():
    assert keypath(("mlp/~/linear_0", "w")) == "mlp/~/linear_0/w"


def test_keypath_of_root_is_named():
    assert keypath(()) == "<root>"


def test_dict_skeleton_keeps_insertion_order_and_key_types():
    flat = flatten({"b": None, "a": None})
    assert flat.skeleton == {
        "kind": "dict",
        "type": None,
        "keys": ["b", "a"],
        "children": [{"kind": "none"}, {"kind": "none"}],
    }


def test_int_keys_are_recorded_as_ints():
    assert flatten({1: None, 0: None}).skeleton["keys"] == [1, 0]


def test_tensor_key_joins_path_with_separator():
    flat = flatten({"layers": [{"w": np.zeros(2, np.float32)}]}, separator="/")
    assert list(flat.leaves) == ["layers/0/w"]


def test_tensor_node_records_dtype_and_shape():
    node = flatten(jnp.zeros((2, 3), jnp.bfloat16)).skeleton
    assert node == {"kind": "tensor", "key": "", "dtype": "bfloat16", "shape": [2, 3]}


def test_scalars_keep_python_type_and_exact_float_repr():
    kinds = [n for _, n in iter_nodes(flatten([True, 3, 0.1, -0.0, float("nan"), "s"]).skeleton)][1:]
    assert [(n["type"], n["value"]) for n in kinds] == [
        ("bool", True),
        ("int", 3),
        ("float", "0.1"),
        ("float", "-0.0"),
        ("float", "nan"),
        ("str", "s"),
    ]


def test_namedtuple_records_name_and_fields():
    node = flatten(Pair(None, None)).skeleton
    assert (node["kind"], node["name"], node["fields"]) == ("namedtuple", "Pair", ["first", "second"])


def test_registered_dataclass_is_a_custom_node_with_attribute_keys():
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class State:
        step: jax.Array
        params: dict

    node = flatten(State(jnp.zeros(()), {})).skeleton
    assert (node["kind"], node["type"].rpartition(".")[2], node["keys"]) == ("node", "State", ["step", "params"])


def test_mixed_key_types_are_refused_with_path():
    with pytest.raises(CkptSchemaError, match=r"^a: dict mixes str and int keys \(\['x', 0\]\)"):
        flatten({"a": {"x": None, 0: None}})


def test_bool_keys_are_refused():
    with pytest.raises(CkptSchemaError, match="dict key True is a bool; keys must be str or int"):
        flatten({True: None})


def test_lone_surrogate_key_is_refused():
    with pytest.raises(CkptSchemaError, match="holds a lone surrogate"):
        flatten({"\ud800": None})


def test_reserved_safetensors_key_is_refused():
    with pytest.raises(CkptSchemaError, match="the tensor key '__metadata__' is reserved by safetensors"):
        flatten({"__metadata__": np.zeros(1, np.float32)})


def test_abstract_leaves_are_only_for_templates():
    sds = jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(CkptSchemaError, match=r"only allowed in templates"):
        flatten({"w": sds})
    assert flatten({"w": sds}, template=True).skeleton["children"][0]["shape"] == [2]


def test_unstorable_dtype_is_refused():
    with pytest.raises(CkptSchemaError, match="w: dtype <U1 cannot be stored"):
        flatten({"w": np.array(["a"])})


def test_deeper_than_limit_is_refused():
    tree = None
    for _ in range(300):
        tree = [tree]
    with pytest.raises(CkptSchemaError, match="the tree is deeper than MAX_DEPTH=250"):
        flatten(tree)


def test_unflatten_is_the_inverse_of_flatten():
    tree = {"a": [1, (2.5, None)], "b": Pair("x", {})}
    flat = flatten(tree)
    assert unflatten(flat.skeleton, lambda n: None) == {"a": [1, (2.5, None)], "b": ("x", {})}


def test_describe_names_kind_dtype_and_shape():
    assert [describe(n) for _, n in iter_nodes(flatten({"w": np.zeros((2, 3), np.int8), "n": 5}).skeleton)] == [
        "dict",
        "int8[2,3]",
        "int 5",
    ]


# ---------------------------------------------------------------- namedtuple classes on load


def _loaded(tree):
    return unflatten(flatten(tree).skeleton, lambda n: None)


def test_namedtuple_records_its_defining_module():
    assert flatten(Pair(None, None)).skeleton["module"] == __name__


def test_namedtuple_loads_as_its_own_class_when_its_module_is_imported():
    assert type(_loaded(Pair(None, 1))) is Pair


def test_namedtuple_of_a_module_not_imported_is_a_fresh_class_and_nothing_is_imported():
    node = {**flatten(Pair(None, None)).skeleton, "module": "ckpt_never_imported_module"}
    loaded = unflatten(node, lambda n: None)
    assert type(loaded) is not Pair and (type(loaded).__name__, loaded._fields) == ("Pair", ("first", "second"))
    assert "ckpt_never_imported_module" not in sys.modules


def test_namedtuple_whose_fields_differ_from_the_imported_class_is_a_fresh_class():
    node = {**flatten(Pair(None, None)).skeleton, "fields": ["second", "first"]}
    assert type(unflatten(node, lambda n: None)) is not Pair


def test_namedtuple_named_after_a_class_that_is_not_a_namedtuple_is_a_fresh_class():
    node = {"kind": "namedtuple", "name": "OrderedDict", "fields": [], "children": [], "module": "collections"}
    assert type(unflatten(node, lambda n: None)) is not collections.OrderedDict


def test_namedtuple_in_a_module_object_that_is_not_a_plain_module_is_not_looked_up():
    class Lazy(types.ModuleType):
        pass

    lazy = Lazy("ckpt_lazy_module")
    lazy.Pair = collections.namedtuple("Pair", "first second", module="ckpt_lazy_module")
    sys.modules["ckpt_lazy_module"] = lazy
    try:
        node = {**flatten(lazy.Pair(None, None)).skeleton}
        assert node["module"] == "ckpt_lazy_module"
        assert type(unflatten(node, lambda n: None)) is not lazy.Pair
    finally:
        del sys.modules["ckpt_lazy_module"]


def test_namedtuple_fields_equal_after_nfkc_normalisation_are_refused_at_save():
    class Ligature(tuple):
        _fields = ("fi", "\ufb01")

    with pytest.raises(
        CkptSchemaError,
        match=r"^<root>: namedtuple Ligature with fields \('fi', 'ﬁ'\) cannot be recreated on load: .* "
        r"distinct after Unicode NFKC normalisation \(as Python compiles them\); rename them$",
    ):
        flatten(Ligature((None, None)))


# ------------------------------------------------------------------------ childless nodes


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Childless:
    pass


def test_pytree_node_without_children_is_a_node_without_children():
    assert flatten({"e": Childless()}).skeleton["children"][0] == {
        "kind": "node",
        "type": f"{__name__}.Childless",
        "keys": [],
        "children": [],
    }


def test_pytree_node_without_children_is_rebuilt_through_its_template():
    template = flatten({"e": Childless()}, template=True).skeleton
    assert rebuild(template, lambda n: None) == {"e": Childless()}
