"""Skeleton comparison and reports: what counts as a mismatch, and how it reads."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckptschema
from ckptschema._compare import compare
from ckptschema._tree import flatten


def _skeleton(tree, template=False):
    return flatten(tree, template=template).skeleton


def test_equal_trees_have_no_issues_and_pair_every_leaf():
    tree = {"w": np.zeros(2, np.float32), "n": 3}
    expected = _skeleton(tree, template=True)
    result = compare(_skeleton(tree), expected)
    assert result.issues == []
    assert len(result.pairs) == 2


def test_list_length_mismatch_reports_missing_and_unexpected_items():
    found = _skeleton([np.zeros(1, np.float32), np.zeros(2, np.float32)])
    expected = _skeleton([np.zeros(1, np.float32)], template=True)
    assert [str(i) for i in compare(found, expected).issues] == ["1: float32[2] in file, not in template"]


def test_missing_empty_container_is_reported_as_itself():
    found = _skeleton({"a": None})
    expected = _skeleton({"a": None, "b": {}}, template=True)
    assert [str(i) for i in compare(found, expected).issues] == ["b: dict in template, not in file"]


def test_dict_and_frozen_mapping_types_are_interchangeable():
    found = {"kind": "dict", "type": "flax.FrozenDict", "keys": [], "children": []}
    assert compare(found, _skeleton({}, template=True)).issues == []


def test_namedtuple_names_must_agree():
    import collections

    a = collections.namedtuple("A", "x")
    b = collections.namedtuple("B", "x")
    issues = compare(_skeleton(a(1)), _skeleton(b(1), template=True)).issues
    assert [str(i) for i in issues] == ["<root>: structure namedtuple A in file, namedtuple B in template"]


def test_scalar_types_must_agree():
    issues = compare(_skeleton({"lr": 1}), _skeleton({"lr": 1.0}, template=True)).issues
    assert [str(i) for i in issues] == ["lr: dtype int in file, float in template"]


def test_template_scalar_values_are_placeholders():
    assert compare(_skeleton({"step": 100}), _skeleton({"step": 0}, template=True)).issues == []


def test_schema_scalar_values_must_agree():
    issues = compare(_skeleton({"step": 100}), _skeleton({"step": 0}), against="schema", values=True).issues
    assert [str(i) for i in issues] == ["step: value int 100 in file, int 0 in schema"]


def test_weak_scalar_template_accepts_python_scalar():
    template = _skeleton(jax.eval_shape(lambda: {"step": 0}), template=True)
    assert compare(_skeleton({"step": 12}), template).issues == []


def test_tensor_where_a_dict_is_expected_is_a_structure_issue():
    issues = compare(_skeleton({"w": np.zeros(1, np.float32)}), _skeleton({"w": {}}, template=True)).issues
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
        "issues": [{"kind": "shape", "path": "w", "found": "(3,)", "expected": "(2,)", "against": "template"}],
    }


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
