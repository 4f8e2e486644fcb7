"""`Issue`: what messages show, and the same facts as data (path parts, found and expected values)."""

from __future__ import annotations

import numpy as np
import pytest

import ckptschema
from ckptschema import Issue


def _validate(saved, template):
    return ckptschema.validate(ckptschema.dumps(saved), template).issues


def test_a_haiku_key_with_slashes_is_one_part_and_nested_dicts_are_several():
    zeros, other = np.zeros(2, np.float32), np.zeros(3, np.float32)
    (haiku,) = _validate({"mlp/~/linear": {"w": zeros}}, {"mlp/~/linear": {"w": other}})
    (nested,) = _validate({"mlp": {"~": {"linear": {"w": zeros}}}}, {"mlp": {"~": {"linear": {"w": other}}}})
    assert haiku.path == nested.path == "mlp/~/linear/w"
    assert (haiku.parts, nested.parts) == (("mlp/~/linear", "w"), ("mlp", "~", "linear", "w"))


def test_int_key_0_and_str_key_0_have_one_path_text_and_different_parts():
    zeros, other = np.zeros(2, np.int8), np.zeros(3, np.int8)
    (by_int,) = _validate({0: zeros}, {0: other})
    (by_str,) = _validate({"0": zeros}, {"0": other})
    assert by_int.path == by_str.path == "0"
    assert (by_int.parts, by_str.parts) == ((0,), ("0",))
    assert by_int != by_str


def test_issues_are_hashable_even_with_a_node_as_their_value():
    (missing,) = _validate({}, {"w": np.zeros(2, np.int8)})
    assert missing.expected_value == {"kind": "tensor", "dtype": "int8", "shape": (2,)}
    assert len({missing, missing}) == 1


def test_issues_at_the_root_have_no_parts():
    (issue,) = _validate(np.zeros(2, np.int8), np.zeros(3, np.int8))
    assert (issue.path, issue.parts) == ("<root>", ())


def test_a_deep_checksum_issue_carries_both_digests():
    tree = {"w": np.zeros(4, np.float32)}
    data = bytearray(ckptschema.dumps(tree))
    data[-1] ^= 1  # the last byte of the last (only) tensor
    (issue,) = ckptschema.validate(bytes(data), deep=True).issues
    recorded = ckptschema.manifest_of(tree).tensors["w"].digest
    assert (issue.kind, issue.parts, issue.expected_value, issue.against) == ("checksum", ("w",), recorded, "manifest")
    assert issue.found_value == issue.found != recorded and len(issue.found_value) == 64


def test_issues_of_a_plain_file_carry_parts_and_values(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a.w": np.zeros((2, 3), np.float32), "extra": np.zeros(1, np.int8)}, str(path))
    issues = ckptschema.validate(path, {"a": {"w": np.zeros((3, 3), np.float32), "b": 0}}).issues
    assert [(i.kind, i.parts, i.found_value, i.expected_value) for i in issues] == [
        ("missing", ("a", "b"), None, {"kind": "scalar", "type": "int"}),
        ("unexpected", ("extra",), {"kind": "tensor", "dtype": "int8", "shape": (1,)}, None),
        ("shape", ("a", "w"), (2, 3), (3, 3)),
    ]


def test_a_file_with_no_manifest_checked_against_a_schema_has_one_issue_without_values(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(1, np.int8)}, str(path))
    (issue,) = ckptschema.validate(path).issues
    assert (issue.kind, issue.parts, issue.found_value, issue.expected_value) == ("structure", (), None, None)


@pytest.mark.parametrize(
    ("issue", "text"),
    [
        (
            Issue("missing", "a/b", None, "int8[2]", "schema", ("a", "b"), None, {}),
            "a/b: int8[2] in schema, not in file",
        ),
        (Issue("unexpected", "x", "int 5", None), "x: int 5 in file, not in template"),
        (
            Issue("shape", "w", "(3,)", "(4,)", "template", ("w",), (3,), (4,)),
            "w: shape (3,) in file, (4,) in template",
        ),
    ],
)
def test_an_issue_reads_as_its_text_fields(issue, text):
    assert str(issue) == text


def test_an_issue_built_with_the_five_text_fields_still_works():
    issue = Issue("dtype", "w", "float16", "float32", "template")
    assert (issue.parts, issue.found_value, issue.expected_value) == ((), None, None)
    assert str(issue) == "w: dtype float16 in file, float32 in template"
