"""Skeleton comparison and reports: what counts as a mismatch, and how it reads."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckptschema
from ckptschema._compare import Match, compare
from ckptschema._flatten import flatten, flatten_template


def _skeleton(tree):
    return flatten(tree).skeleton


def _with_template(found_tree, template_tree, **kwargs):
    """`compare` of a tree's skeleton with a template's, the template's leaves given."""
    template = flatten_template(template_tree)
    return compare(_skeleton(found_tree), template.skeleton, likes=template.likes, **kwargs)


def test_equal_trees_have_no_issues_and_match_every_leaf_in_template_order():
    tree = {"w": np.zeros(2, np.float32), "n": 3}
    template = {"w": jax.ShapeDtypeStruct((2,), jnp.float32), "n": 0}
    result = _with_template(tree, template)
    assert result.issues == []
    found = _skeleton(tree)["children"]
    assert result.matches == [Match(("w",), found[0], template["w"]), Match(("n",), found[1], 0)]
    assert result.matches[0].like is template["w"]


def test_matches_follow_the_template_order_not_the_file_order():
    result = _with_template({"a": 1, "b": 2.5}, {"b": 0.0, "a": 0})
    assert [(m.path, m.found["value"], m.like) for m in result.matches] == [(("b",), "2.5", 0.0), (("a",), 1, 0)]


def test_matches_carry_the_path_under_the_compared_roots():
    template = flatten_template({"w": np.zeros(1, np.int8)})
    result = compare(_skeleton({"w": np.zeros(1, np.int8)}), template.skeleton, ("params", 0), likes=template.likes)
    assert [m.path for m in result.matches] == [("params", 0, "w")]


def test_a_mismatched_subtree_leaves_the_later_matches_with_their_own_template_leaves():
    like = np.zeros(1, np.int8)
    result = _with_template({"a": (1, 2), "b": np.zeros(1, np.int8)}, {"a": [0, 0], "b": like})
    assert [i.kind for i in result.issues] == ["structure"]
    assert [(m.path, m.like is like) for m in result.matches] == [(("b",), True)]


def test_a_missing_subtree_leaves_the_later_matches_with_their_own_template_leaves():
    like = np.zeros(1, np.int8)
    result = _with_template({"b": np.zeros(1, np.int8)}, {"a": {"x": 0, "y": 1.0}, "b": like})
    assert [i.kind for i in result.issues] == ["missing", "missing"]
    assert [(m.path, m.like is like) for m in result.matches] == [(("b",), True)]


def test_schema_matches_have_no_template_leaf():
    result = compare(_skeleton({"n": 3}), _skeleton({"n": 3}), against="schema", values=True)
    assert [m.like for m in result.matches] == [None]


def test_list_length_mismatch_reports_missing_and_unexpected_items():
    found = _skeleton([np.zeros(1, np.float32), np.zeros(2, np.float32)])
    expected = flatten_template([np.zeros(1, np.float32)]).skeleton
    assert [str(i) for i in compare(found, expected).issues] == ["1: float32[2] in file, not in template"]


def test_missing_empty_container_is_reported_as_itself():
    found = _skeleton({"a": None})
    expected = flatten_template({"a": None, "b": {}}).skeleton
    assert [str(i) for i in compare(found, expected).issues] == ["b: dict in template, not in file"]


def test_dict_and_frozen_mapping_types_are_interchangeable():
    found = {"kind": "dict", "type": "flax.FrozenDict", "keys": [], "children": []}
    assert compare(found, flatten_template({}).skeleton).issues == []


def test_namedtuple_names_must_agree():
    import collections

    a = collections.namedtuple("A", "x")
    b = collections.namedtuple("B", "x")
    issues = _with_template(a(1), b(1)).issues
    assert [str(i) for i in issues] == ["<root>: structure namedtuple A in file, namedtuple B in template"]


def test_scalar_types_must_agree():
    issues = _with_template({"lr": 1}, {"lr": 1.0}).issues
    assert [str(i) for i in issues] == ["lr: dtype int in file, float in template"]


def test_template_scalar_values_are_placeholders():
    assert _with_template({"step": 100}, {"step": 0}).issues == []


def test_schema_scalar_values_must_agree():
    issues = compare(_skeleton({"step": 100}), _skeleton({"step": 0}), against="schema", values=True).issues
    assert [str(i) for i in issues] == ["step: value int 100 in file, int 0 in schema"]


def test_weak_scalar_template_accepts_python_scalar():
    result = _with_template({"step": 12}, jax.eval_shape(lambda: {"step": 0}))
    assert result.issues == []
    assert [m.found for m in result.matches] == [{"kind": "scalar", "type": "int", "value": 12}]


def test_schema_tensor_does_not_accept_a_python_scalar():
    schema = _skeleton({"step": np.zeros((), np.int32)})
    issues = compare(_skeleton({"step": 12}), schema, against="schema").issues
    assert [str(i) for i in issues] == ["step: structure int 12 in file, int32[] in schema"]


def test_tensor_where_a_dict_is_expected_is_a_structure_issue():
    issues = _with_template({"w": np.zeros(1, np.float32)}, {"w": {}}).issues
    assert [str(i) for i in issues] == ["w: structure float32[1] in file, dict in template"]


def test_report_reads_as_grouped_problems():
    data = ckptschema.dumps({"w": np.zeros(3, np.float32), "x": np.zeros(1, np.int8)})
    report = ckptschema.validate(data, {"w": jax.ShapeDtypeStruct((4,), jnp.float32), "y": np.zeros(1, np.int8)})
    assert str(report) == (
        "<bytes>: 3 problems\n"
        "  missing (1):\n"
        "    y: int8[1] in template, not in file\n"
        "  unexpected (1):\n"
        "    x: int8[1] in file, not in template\n"
        "  shape (1):\n"
        "    w: shape (3,) in file, (4,) in template"
    )


def test_report_json_lists_issue_fields():
    data = ckptschema.dumps({"w": np.zeros(3, np.float32)})
    report = json.loads(ckptschema.validate(data, {"w": np.zeros(2, np.float32)}).to_json())
    assert report == {
        "source": "<bytes>",
        "ok": False,
        "issues": [
            {
                "kind": "shape",
                "path": "w",
                "found": "(3,)",
                "expected": "(2,)",
                "against": "template",
                "parts": ["w"],
                "found_value": [3],
                "expected_value": [2],
            }
        ],
    }


def test_report_json_spells_floats_json_cannot_hold_as_a_manifest_does():
    schema = ckptschema.manifest_of({"lr": float("nan")})
    report = json.loads(ckptschema.validate(ckptschema.dumps({"lr": float("-inf")}), schema).to_json())
    assert [(i["found_value"], i["expected_value"]) for i in report["issues"]] == [("-inf", "nan")]


# ------------------------------------------------------------------ issues carry data


def _issue(found_tree, template_tree, **kwargs):
    (issue,) = _with_template(found_tree, template_tree, **kwargs).issues
    return issue


def test_shape_issue_carries_both_shapes_as_tuples():
    issue = _issue({"w": np.zeros((3, 4), np.float32)}, {"w": np.zeros((4, 4), np.float32)})
    assert (issue.parts, issue.found_value, issue.expected_value) == (("w",), (3, 4), (4, 4))


def test_dtype_issue_carries_dtype_names():
    issue = _issue({"w": np.zeros(2, np.float16)}, {"w": jax.ShapeDtypeStruct((2,), jnp.bfloat16)})
    assert (issue.kind, issue.found_value, issue.expected_value) == ("dtype", "float16", "bfloat16")


def test_scalar_type_issue_carries_python_type_names():
    issue = _issue({"lr": 1}, {"lr": 1.0})
    assert (issue.kind, issue.found_value, issue.expected_value) == ("dtype", "int", "float")


def test_value_issue_carries_the_python_scalars():
    issue = compare(_skeleton({"lr": 0.5}), _skeleton({"lr": 0.25}), against="schema", values=True).issues[0]
    assert (issue.kind, issue.found_value, issue.expected_value) == ("value", 0.5, 0.25)


def test_checksum_issue_carries_hex_digests_and_none_for_a_file_without_one():
    schema = ckptschema.manifest_of({"w": np.ones(2, np.float32)}).skeleton
    unhashed = ckptschema.manifest_of({"w": np.zeros(2, np.float32)}, checksum=None).skeleton
    (issue,) = compare(unhashed, schema, against="schema", values=True).issues  # type: ignore[arg-type]
    assert (issue.kind, issue.found, issue.found_value) == ("checksum", "none", None)
    assert issue.expected_value == schema["children"][0]["digest"] and len(issue.expected_value) == 64


def test_missing_and_unexpected_issues_carry_the_node_without_its_children():
    issues = _with_template({"x": np.zeros(1, np.int8)}, {"y": {"z": 5}}).issues
    assert [(i.kind, i.parts, i.found_value, i.expected_value) for i in issues] == [
        ("missing", ("y", "z"), None, {"kind": "scalar", "type": "int", "value": 5}),
        ("unexpected", ("x",), {"kind": "tensor", "dtype": "int8", "shape": (1,)}, None),
    ]


def test_structure_issue_carries_both_kinds():
    issue = _issue({"layers": (np.zeros(2, np.float32),)}, {"layers": [np.zeros(2, np.float32)]})
    assert (issue.kind, issue.found_value, issue.expected_value) == ("structure", {"kind": "tuple"}, {"kind": "list"})


def test_prng_keys_of_another_implementation_do_not_match_the_template():
    saved = {"rng": jax.random.key(0, impl="rbg")}
    template = {"rng": jax.random.key(0, impl="unsafe_rbg")}
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.loads(ckptschema.dumps(saved), template)
    assert e.value.issues[0].found == "wrapper jax.random.key (rbg)"
    assert e.value.issues[0].expected == "wrapper jax.random.key (unsafe_rbg)"
    assert str(e.value.issues[0]) == (
        "rng: structure wrapper jax.random.key (rbg) in file, wrapper jax.random.key (unsafe_rbg) in template"
    )
