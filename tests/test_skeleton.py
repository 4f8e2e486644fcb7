"""The skeleton's vocabulary: path text, the one `children` accessor, the walk, and descriptions."""

from __future__ import annotations

import numpy as np

from ckptschema._flatten import flatten
from ckptschema._skeleton import children, describe, iter_nodes, path_text, summary

NONE = {"kind": "none"}


def test_path_text_joins_parts_with_slash():
    assert path_text(("mlp/~/linear_0", "w")) == "mlp/~/linear_0/w"


def test_path_text_of_root_is_named():
    assert path_text(()) == "<root>"


def test_children_of_a_sequence_are_keyed_by_index():
    assert children({"kind": "tuple", "children": [NONE, NONE]}, ("a",)) == [(("a", 0), NONE), (("a", 1), NONE)]


def test_children_of_a_namedtuple_are_keyed_by_field():
    node = {"kind": "namedtuple", "name": "P", "fields": ["x", "y"], "children": [NONE, NONE]}
    assert [p for p, _ in children(node)] == [("x",), ("y",)]


def test_children_of_a_dict_and_a_node_are_keyed_by_their_keys_as_they_are():
    assert [p for p, _ in children({"kind": "dict", "type": None, "keys": [1, 0], "children": [NONE, NONE]})] == [
        (1,),
        (0,),
    ]
    assert [p for p, _ in children({"kind": "node", "type": "m.S", "keys": ["step"], "children": [NONE]})] == [
        ("step",)
    ]


def test_the_child_of_a_wrapper_has_the_wrappers_path():
    assert children({"kind": "wrapper", "type": "flax.nnx.Param", "metadata": {}, "child": NONE}, ("w",)) == [
        (("w",), NONE)
    ]


def test_leaves_have_no_children():
    tensor = {"kind": "tensor", "key": "w", "dtype": "int8", "shape": [1]}
    assert children(tensor) == children({"kind": "scalar", "type": "int", "value": 1}) == children(NONE) == []


def test_iter_nodes_goes_parents_first_in_order_through_wrappers():
    wrapped = {"kind": "wrapper", "type": "flax.nnx.Param", "metadata": {}, "child": NONE}
    skeleton = {
        "kind": "dict",
        "type": None,
        "keys": ["b", "a"],
        "children": [wrapped, {"kind": "list", "children": [NONE]}],
    }
    assert [(p, n["kind"]) for p, n in iter_nodes(skeleton)] == [
        ((), "dict"),
        (("b",), "wrapper"),
        (("b",), "none"),
        (("a",), "list"),
        (("a", 0), "none"),
    ]


def test_describe_names_kind_dtype_and_shape():
    assert [describe(n) for _, n in iter_nodes(flatten({"w": np.zeros((2, 3), np.int8), "n": 5}).skeleton)] == [
        "dict",
        "int8[2,3]",
        "int 5",
    ]


def test_summary_is_the_node_as_data_without_children_or_key():
    skeleton = flatten({"w": np.zeros((2, 3), np.int8), "lr": 0.5, "s": "x"}).skeleton
    assert [summary(n) for _, n in iter_nodes(skeleton)] == [
        {"kind": "dict", "type": None},
        {"kind": "tensor", "dtype": "int8", "shape": (2, 3)},
        {"kind": "scalar", "type": "float", "value": 0.5},
        {"kind": "scalar", "type": "str", "value": "x"},
    ]


def test_summary_of_a_structure_only_scalar_has_no_value():
    assert summary({"kind": "scalar", "type": "int"}) == {"kind": "scalar", "type": "int"}
