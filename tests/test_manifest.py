"""The manifest models: what they accept, what they refuse, and the committed JSON Schema."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema._json import compact_json, strict_json
from ckptschema._manifest_file import ManifestFile, parse_manifest
from ckptschema._scalars import scalar_value

SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / f"manifest-v{ckptschema.FORMAT_VERSION}.schema.json"


def _manifest(skeleton: dict, **fields) -> dict:
    return {"version": 1, "framework": "jax", "separator": ".", "checksum": None, "skeleton": skeleton, **fields}


def _tensor(dtype: str = "float32") -> str:
    return dtype


def test_committed_json_schema_is_current():
    """Regenerate with: python -m ckptschema json-schema > schemas/manifest-v1.schema.json"""
    assert SCHEMA_FILE.read_text() == json.dumps(ckptschema.json_schema(), indent=2) + "\n"


def test_json_schema_accepts_a_saved_manifest():
    manifest = ckptschema.manifest_of({"a": [np.zeros(2, np.int8), None, 1.5], "b": (True, "s")})
    jsonschema.validate(manifest.data, json.loads(SCHEMA_FILE.read_text()))


def test_manifest_exposes_tensors_params_and_bytes():
    m = ckptschema.manifest_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float16), "n": 2})
    assert (list(m.tensors), m.num_params, m.nbytes) == (["w", "b"], 16, 56)


def test_newer_version_names_both_versions():
    with pytest.raises(ckptschema.FormatError) as e:
        parse_manifest(json.dumps(_manifest(_tensor(), version=2)), "m.safetensors")
    assert str(e.value) == (
        "m.safetensors: manifest version 2 is newer than this ckptschema reads (version 1); upgrade ckptschema"
    )


@pytest.mark.parametrize(
    ("skeleton", "fields"),
    [
        (_tensor(dtype="float128"), {}),
        ({"kind": "tensor", "key": "w", "dtype": "float32", "shape": [2]}, {}),
        ({"kind": "list", "children": ["F32"]}, {}),
        (_tensor(), {"checksum": "sha256"}),
        (_tensor(), {"digests": "AAAA"}),
        (_tensor(), {"checksum": "md5", "digests": "AAAA"}),
        (_tensor(), {"checksum": "sha256", "digests": "AAAAA"}),
        (_tensor(), {"checksum": "sha256", "digests": "AA A"}),
        ({"kind": "dict", "keys": ["a", "a"], "children": [{"kind": "none"}, {"kind": "none"}]}, {}),
        ({"kind": "dict", "keys": ["a"], "children": []}, {}),
        ({"kind": "dict", "keys": ["a", 1], "children": [{"kind": "none"}, {"kind": "none"}]}, {}),
        ({"kind": "namedtuple", "name": "os.system", "fields": [], "children": []}, {}),
        ({"kind": "namedtuple", "name": "P", "fields": ["_x"], "children": [{"kind": "none"}]}, {}),
        ({"kind": "scalar", "type": "int", "value": True}, {}),
        ({"kind": "scalar", "type": "float", "value": "1e400x"}, {}),
        ({"kind": "scalar", "type": "float", "value": "nan:0x7ff8000000000000"}, {}),
        ({"kind": "scalar", "type": "float", "value": "nan:0xFFF8000000000000"}, {}),
        ({"kind": "scalar", "type": "float", "value": "nan:0x0000000000000001"}, {}),
        ({"kind": "scalar", "type": "float", "value": "nan:0xfff8"}, {}),
        ({"kind": "scalar", "type": "float", "value": "-nan"}, {}),
        ({"kind": "none"}, {"framework": "Not A Framework"}),
        ({"kind": "none"}, {"separator": ""}),
        ({"kind": "none"}, {"unknown": 1}),
    ],
    ids=[
        "unknown-dtype",
        "tensor-as-an-object",
        "header-code-as-dtype",
        "checksum-without-digests",
        "digests-without-checksum",
        "unknown-checksum",
        "digests-not-base64-groups",
        "digests-with-a-space",
        "duplicate-keys",
        "keys-without-children",
        "mixed-key-types",
        "dotted-namedtuple-name",
        "private-field",
        "bool-as-int",
        "bad-float",
        "canonical-nan-spelled-with-bits",
        "nan-bits-in-uppercase",
        "nan-bits-of-a-number",
        "nan-bits-too-short",
        "minus-nan",
        "framework-pattern",
        "empty-separator",
        "unknown-top-field",
    ],
)
def test_invalid_manifests_are_format_errors(skeleton, fields):
    with pytest.raises(ckptschema.FormatError, match=r"^m.safetensors: invalid manifest: "):
        parse_manifest(json.dumps(_manifest(skeleton, **fields)), "m.safetensors")


def test_a_nan_spelled_by_its_bits_parses_to_those_bits():
    skeleton = {"kind": "scalar", "type": "float", "value": "nan:0xfff0000000000001"}
    value = parse_manifest(json.dumps(_manifest(skeleton)), "m.safetensors").skeleton["value"]
    assert struct.pack(">d", scalar_value({"type": "float", "value": value})).hex() == "fff0000000000001"


def test_lone_surrogates_are_refused():
    text = json.dumps(_manifest({"kind": "scalar", "type": "str", "value": "\ud800"}))
    with pytest.raises(ckptschema.FormatError, match=r"^m\.safetensors: manifest holds a lone surrogate$"):
        parse_manifest(text, "m.safetensors")


def test_duplicate_json_keys_are_refused():
    text = '{"version": 1, "version": 1, "skeleton": {"kind": "none"}}'
    with pytest.raises(ckptschema.FormatError, match="manifest repeats the key 'version'"):
        parse_manifest(text, "m.safetensors")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=24,
)


def _dicts(value: object) -> list[dict]:
    found = [value] if isinstance(value, dict) and value else []
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return found + [d for child in children for d in _dicts(child)]


def _compact_with_repeat(value: object, target: dict, key: str) -> str:
    """`compact_json(value)`, with `key` written twice in the dict `target`."""
    if isinstance(value, list):
        return "[" + ",".join(_compact_with_repeat(v, target, key) for v in value) + "]"
    if isinstance(value, dict):
        members = [f"{compact_json(k)}:{_compact_with_repeat(v, target, key)}" for k, v in value.items()]
        if value is target:
            members.append(f"{compact_json(key)}:{compact_json(value[key])}")
        return "{" + ",".join(members) + "}"
    return compact_json(value)


@given(_JSON)
def test_compact_json_parses_back_to_the_same_value(value):
    assert strict_json(compact_json(value), "document", max_objects=10**6) == value


@given(_JSON.filter(_dicts), st.data())
def test_a_key_repeated_in_compact_json_is_refused_even_with_the_same_value(value, data):
    target = data.draw(st.sampled_from(_dicts(value)))
    key = data.draw(st.sampled_from(sorted(target)))
    with pytest.raises(ValueError, match="document repeats the key"):
        strict_json(_compact_with_repeat(value, target, key), "document", max_objects=10**6)


def test_nan_in_manifest_json_is_refused():
    with pytest.raises(ckptschema.FormatError, match="manifest holds NaN, which is not JSON"):
        parse_manifest('{"skeleton": {"kind": "scalar", "type": "float", "value": NaN}}', "m.safetensors")


def test_trees_200_levels_deep_are_described():
    tree: object = np.zeros(1, np.float32)
    for _ in range(200):
        tree = [tree]
    manifest = ckptschema.manifest_of(tree)
    assert list(manifest.tensors) == [".".join(["0"] * 200)]


def test_schema_document_is_sorted_and_stable():
    tree = {"b": np.ones(2, np.float32), "a": 1}
    first = ckptschema.manifest_of(tree).schema_document()
    assert first == ckptschema.manifest_of(tree).schema_document()
    assert list(json.loads(first)) == [
        "ckptschema_schema",
        "/a",
        "/b",
        "framework",
        "separator",
        "checksum",
        "structure_only",
    ]


def test_model_is_strict_about_types():
    with pytest.raises(ValueError):
        ManifestFile.model_validate(_manifest({"kind": "dict", "type": None, "keys": [1.0], "children": [_tensor()]}))


def test_a_tensor_is_stored_as_its_dtype_name_and_its_digest_in_one_base64_string():
    manifest = ckptschema.manifest_of({"w": np.zeros(2, np.float32), "b": np.ones(3, np.int8)}, checksum="sha256")
    data = manifest.data
    assert data["skeleton"] == {"kind": "dict", "type": None, "keys": ["w", "b"], "children": ["float32", "int8"]}
    digests = base64.b64decode(data["digests"])
    assert [digests[:32].hex(), digests[32:].hex()] == [manifest.tensors["w"].digest, manifest.tensors["b"].digest]
    assert list(data) == ["version", "framework", "separator", "checksum", "skeleton", "digests"]
