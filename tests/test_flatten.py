"""Pytree -> skeleton: skeletons, tensor keys, templates, and what is refused before anything is written."""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckptschema import CkptSchemaError
from ckptschema._flatten import flatten, flatten_template
from ckptschema._skeleton import iter_nodes

Pair = collections.namedtuple("Pair", "first second")


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
    assert flatten_template({"w": sds}).skeleton["children"][0]["shape"] == [2]


def test_unstorable_dtype_is_refused():
    with pytest.raises(CkptSchemaError, match="w: dtype <U1 cannot be stored"):
        flatten({"w": np.array(["a"])})


def test_deeper_than_limit_is_refused():
    tree = None
    for _ in range(300):
        tree = [tree]
    with pytest.raises(CkptSchemaError, match="the tree is deeper than MAX_DEPTH=250"):
        flatten(tree)


# ------------------------------------------------------------------------- namedtuples


def test_namedtuple_records_its_defining_module():
    assert flatten(Pair(None, None)).skeleton["module"] == __name__


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


# -------------------------------------------------------------------------- templates


def test_a_template_skeleton_is_the_skeleton_of_the_same_tree_saved():
    tree = {"a": [np.zeros(2, np.float32), (1, "s")], "p": Pair(0.5, None), "e": Childless()}
    assert flatten_template(tree).skeleton == flatten(tree).skeleton


def test_a_template_keeps_its_own_leaves_in_walk_order():
    w, sds = np.zeros(2, np.float32), jax.ShapeDtypeStruct((3,), jnp.int8)
    template = flatten_template({"b": [w, 7], "a": Pair(sds, None)})
    assert [type(like) for like in template.likes] == [np.ndarray, int, jax.ShapeDtypeStruct]
    assert template.likes[0] is w and template.likes[1] == 7 and template.likes[2] is sds


def test_a_template_keeps_a_handle_per_namedtuple_typed_container_and_node_children_first():
    inner = Pair(None, Childless())
    outer = collections.OrderedDict(x=inner)
    template = flatten_template(outer)
    assert [type(h) for h in template.handles[:2]] == [type(jax.tree_util.tree_structure(Childless())), Pair]
    assert template.handles[1] is inner and template.handles[2] is outer and len(template.handles) == 3


def test_a_plain_dict_list_and_tuple_need_no_handle():
    assert flatten_template({"a": [(None,)]}).handles == []
