"""Schema documents for review: their lines, their order, their round trip, their JSON Schema."""

from __future__ import annotations

import difflib
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptschema
from ckptschema._flatten import flatten
from ckptschema._paths import parse_name, spell_path
from ckptschema._review import DOCUMENT_VERSION
from ckptschema._review_parse import document_json_schema, parse_schema
from ckptschema._skeleton import children

from .strategies import int_keys, str_keys, trees

ROOT = Path(__file__).parent.parent
SCHEMA_FILE = ROOT / "schemas" / f"schema-doc-v{DOCUMENT_VERSION}.schema.json"
F32 = np.float32


def _doc(tree: Any, **kwargs: Any) -> str:
    return ckptschema.manifest_of(tree).schema_document(**kwargs)


def _part_key(part: Any) -> tuple[int, Any]:
    return (0, part) if isinstance(part, int) else (1, part)


def _normalized(node: dict[str, Any]) -> dict[str, Any]:
    """A skeleton with dict and custom-node children in path order (what a document keeps)."""
    node = dict(node)
    if "child" in node:
        node["child"] = _normalized(node["child"])
    if "children" in node:
        pairs = [(sub[-1], _normalized(c)) for sub, c in children(node)]
        if node["kind"] in ("dict", "node"):
            pairs.sort(key=lambda p: _part_key(p[0]))
            node["keys"] = [k for k, _ in pairs]
        node["children"] = [c for _, c in pairs]
    return node


def _changed_lines(a: str, b: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))
    body = [line for line in diff[2:] if not line.startswith("@@")]
    return [line[1:] for line in body if line[0] == "-"], [line[1:] for line in body if line[0] == "+"]


# ------------------------------------------------------------------------------ the lines


def test_document_has_one_line_per_leaf_with_path_dtype_shape_and_digest():
    kernel = np.ones((16, 32), F32)
    doc = _doc({"params": {"Dense_0": {"kernel": kernel}}, "step": 3})
    digest = ckptschema.manifest_of({"k": kernel}).tensors["k"].digest
    assert doc.splitlines()[1:4] == [
        '  "ckptschema_schema": 2,',
        f'  "/params/Dense_0/kernel": "float32[16,32] blake3:{digest}",',
        '  "/step": "int 3",',
    ]


def test_containers_whose_type_matters_get_one_line_each():
    import collections

    point = collections.namedtuple("Point", "x y")
    doc = _doc({"opt": (point(1, 2.5), []), "ints": {0: None}, "empty": {}, "s": "it's"})
    assert doc.splitlines()[2:10] == [
        '  "/empty/": "dict",',
        '  "/ints/0": "none",',
        '  "/opt/": "tuple",',
        '  "/opt/0/": "namedtuple tests.test_review.Point(x,y)",',
        '  "/opt/0/x": "int 1",',
        '  "/opt/0/y": "float 2.5",',
        '  "/opt/1/": "list",',
        '  "/s": "str \\"it\'s\\"",',
    ]


def test_paths_keep_int_and_str_keys_apart_and_quote_what_needs_it():
    assert spell_path(("a", 0, "0", "", "mlp/~/linear_0", "it's", "-3", "x.y[0]")) == (
        "/a/0/'0'/''/'mlp/~/linear_0'/'it''s'/'-3'/x.y[0]"
    )


@given(st.lists(str_keys | int_keys, max_size=5))
def test_every_path_reads_back_as_its_parts(parts):
    spelled = spell_path(tuple(parts))
    assert parse_name(spelled) == (tuple(parts), False)
    assert parse_name(spelled + "/") == (tuple(parts), True)
    assert [type(p) for p in parse_name(spelled)[0]] == [type(p) for p in parts]


def test_order_sorts_ints_by_value_and_children_after_their_container():
    doc = _doc({"layers": [np.zeros(1, F32)] * 11, "a": {"b": 1}, "a0": 2})
    names = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in doc.splitlines()[2:-5]]
    assert names == ["/a/b", "/a0", "/layers/", *[f"/layers/{i}" for i in range(11)]]


@given(trees(), st.randoms(use_true_random=False))
def test_document_does_not_depend_on_dict_insertion_order(tree, random):
    def shuffled(x: Any) -> Any:
        if type(x) is dict:
            items = list(x.items())
            random.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if type(x) in (list, tuple):
            return type(x)(map(shuffled, x))
        return x

    assert _doc(shuffled(tree)) == _doc(tree)


@given(trees(), st.integers(1, 5))
def test_changing_one_tensors_shape_changes_exactly_one_line(tree, size):
    tree = {"w": np.zeros(7, F32), "rest": tree}
    before, after = _doc(tree), _doc({**tree, "w": np.zeros(size, F32)})
    removed, added = _changed_lines(before, after)
    assert (len(removed), len(added)) == (1, 1)
    assert removed[0].startswith('  "/w": "float32[7]') and added[0].startswith(f'  "/w": "float32[{size}]')


def test_adding_a_leaf_at_the_end_adds_one_line():
    removed, added = _changed_lines(_doc({"a": 1}), _doc({"a": 1, "z": 2}))
    assert (removed, added) == ([], ['  "/z": "int 2",'])


def test_structure_only_leaves_out_digests_and_values():
    doc = _doc({"w": np.ones(2, F32), "step": 3}, structure_only=True)
    assert doc.splitlines()[2:] == [
        '  "/step": "int",',
        '  "/w": "float32[2]",',
        '  "framework": "jax",',
        '  "separator": ".",',
        '  "checksum": null,',
        '  "structure_only": true',
        "}",
    ]


# ------------------------------------------------------------------------- the round trip


@st.composite
def skeletons(draw: st.DrawFn) -> dict[str, Any]:
    """Skeletons of every kind: trees as saved, with wrappers, framework dicts and custom nodes added."""
    metadata = st.dictionaries(
        st.text(max_size=3),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=3),
        max_size=2,
    )
    types = st.sampled_from(["flax.core.FrozenDict", "collections.OrderedDict", 'my "odd" type', "pkg.Cls"])

    def decorate(node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "children" in node:
            node["children"] = [decorate(c) for c in node["children"]]
        if node["kind"] == "dict" and draw(st.booleans()):
            node = {**node, "kind": draw(st.sampled_from(["dict", "node"])), "type": draw(types)}
        for _ in range(draw(st.integers(0, 2))):
            node = {"kind": "wrapper", "type": draw(types), "metadata": draw(metadata), "child": node}
        return node

    return decorate(flatten(draw(trees())).skeleton)


def _manifest(skeleton: dict[str, Any]) -> ckptschema.Manifest:
    """A manifest of a skeleton that no file holds (no digests)."""
    fields = {"version": 1, "framework": "jax", "separator": ".", "checksum": None}
    return ckptschema.Manifest.model_construct(**fields, skeleton=skeleton)


@given(skeletons())
def test_skeleton_to_document_to_skeleton_is_exact(skeleton):
    manifest = _manifest(skeleton)
    schema = parse_schema(manifest.schema_document(), "s.json")
    assert schema.skeleton == _normalized(skeleton)
    assert schema.document() == manifest.schema_document()


@given(skeletons())
def test_structure_only_documents_read_back_without_digests_or_values(skeleton):
    manifest = _manifest(skeleton)
    text = manifest.schema_document(structure_only=True)
    schema = parse_schema(text, "s.json")
    assert (schema.structure_only, schema.checksum, schema.document()) == (True, None, text)
    assert '"blake3:' not in text and '"sha256:' not in text


# ---------------------------------------------------------------------------- validation


def test_structure_only_schema_checks_shapes_but_not_values(tmp_path):
    tree = {"w": np.zeros(2, F32), "step": 1}
    schema = ckptschema.Schema.of(ckptschema.manifest_of(tree), structure_only=True)
    retrained = ckptschema.dumps({"w": np.ones(2, F32), "step": 9})
    reshaped = ckptschema.dumps({"w": np.ones(3, F32), "step": 9})
    assert ckptschema.validate(retrained, schema).ok
    assert [str(i) for i in ckptschema.validate(reshaped, schema).issues] == ["w: shape (3,) in file, (2,) in schema"]


def test_structure_only_schema_names_a_missing_scalar_by_its_type():
    schema = ckptschema.Schema.of(ckptschema.manifest_of({"step": 1, "w": np.zeros(1, F32)}), structure_only=True)
    issues = ckptschema.validate(ckptschema.dumps({"w": np.zeros(1, F32)}), schema).issues
    assert [str(i) for i in issues] == ["step: int scalar in schema, not in file"]


def test_document_keeps_every_structural_check(tmp_path):
    tree = {"pair": (np.zeros(1, F32), 2), "d": {0: np.zeros(1, F32)}}
    schema = parse_schema(_doc(tree), "s.json")
    changed = ckptschema.dumps({"pair": [np.zeros(1, F32), 2], "d": {"0": np.zeros(1, F32)}})
    assert [str(i) for i in ckptschema.validate(changed, schema).issues] == [
        "d/0: float32[1] in schema, not in file",
        "d/0: float32[1] in file, not in schema",
        "pair: structure list in file, tuple in schema",
    ]


def test_a_committed_document_still_validates_todays_save(tmp_path):
    """Regenerate with: ckptschema schema m.safetensors -o tests/data/model.schema.json (a save of flax_like())."""
    from .test_cli import flax_like

    committed = ROOT / "tests" / "data" / "model.schema.json"
    ckptschema.save(tmp_path / "m.safetensors", flax_like(), framework="flax")
    assert ckptschema.validate(tmp_path / "m.safetensors", committed).ok
    schema = ckptschema.load_schema(committed)
    assert schema.document() == ckptschema.read_manifest(tmp_path / "m.safetensors").schema_document()


def test_inspect_shows_a_schema_document(tmp_path, capsys):
    from ckptschema.cli import main

    (tmp_path / "s.json").write_text(_doc({"w": np.zeros((2, 3), F32)}, structure_only=True))
    assert main(["inspect", str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{tmp_path / 's.json'}: jax schema document, no checksums"


def test_load_schema_reads_a_stream():
    text = _doc({"w": np.zeros(1, F32)})
    assert ckptschema.load_schema(io.BytesIO(text.encode())).document() == text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"ckptschema_schema": 3},
            "s.json: schema document version 3 is newer than this ckptschema reads (version 2); upgrade ckptschema",
        ),
        (
            {"/x//y": "int 1"},
            "s.json: invalid schema document: \"/x//y\": an empty part, or a ' in an unquoted part (quote it: 'it''s')",
        ),
        (
            {"/l/": "list", "/l/1": "int 1"},
            "s.json: invalid schema document: /l/: a list's children are at the indices 0 to n-1",
        ),
        ({"/w/": "tuple"}, 's.json: invalid schema document: "/w/": both a container and a leaf'),
        (
            {"/w": "float32[2] sha256:xyz"},
            "s.json: invalid schema document: \"/w\": 'float32[2] sha256:xyz' is not a tensor, scalar or none",
        ),
        ({"/w": "float32[2]", "/w/x": "int 1"}, "s.json: invalid schema document: /w: a tensor holds no children"),
        ({"/n": "int 03"}, "s.json: invalid schema document: \"/n\": '03' is not a int value"),
        ({"/d/a": "int 1", "/d/0": "int 1"}, "s.json: invalid schema document: /d/: a dict mixes int and str keys"),
    ],
    ids=["newer", "empty-part", "list-hole", "container-and-leaf", "bad-digest", "leaf-children", "int", "mixed"],
)
def test_bad_documents_are_refused_naming_the_entry(edit, message):
    data = json.loads(_doc({"w": np.zeros(2, F32)}))
    with pytest.raises(ckptschema.FormatError) as e:
        parse_schema(json.dumps({**data, **edit}), "s.json")
    assert str(e.value) == message


def test_a_chain_of_wrappers_deeper_than_the_limit_is_refused():
    data = json.loads(_doc({"w": np.zeros(2, F32)}))
    chain = " > ".join(["wrapper flax.nnx.Param"] * 300)
    with pytest.raises(ckptschema.FormatError) as e:
        parse_schema(json.dumps({**data, "/w/": chain}), "s.json")
    assert str(e.value) == 's.json: invalid schema document: "/w/": deeper than MAX_DEPTH=250'


def test_a_structure_only_document_with_a_digest_is_refused():
    data = json.loads(_doc({"w": np.zeros(2, F32)}))
    with pytest.raises(ckptschema.FormatError, match="a structure-only document holds no digests"):
        parse_schema(json.dumps({**data, "structure_only": True, "checksum": None}), "s.json")


# --------------------------------------------------------------------------- JSON Schema


def test_committed_document_json_schema_is_current():
    """Regenerate with: python -m ckptschema json-schema --schema-document > schemas/schema-doc-v2.schema.json"""
    assert (
        SCHEMA_FILE.read_text(encoding="utf-8")
        == json.dumps(document_json_schema(), indent=2, ensure_ascii=False) + "\n"
    )


@given(skeletons(), st.booleans())
def test_json_schema_accepts_every_document(skeleton, structure_only):
    manifest = _manifest(skeleton)
    document = json.loads(manifest.schema_document(structure_only=structure_only))
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def test_json_schema_accepts_a_document_whose_key_ends_with_a_newline():
    document = json.loads(_doc({"\n": np.zeros(1, F32), "d": {"\n": None}}))
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


@pytest.mark.parametrize("edit", [{"/w": "float128[2]"}, {"w": "int 1"}, {"/t/": "set"}, {"framework": "Not"}])
def test_json_schema_refuses_what_the_reader_refuses(edit):
    data = {**json.loads(_doc({"w": np.zeros(2, F32)})), **edit}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    with pytest.raises(ckptschema.FormatError):
        parse_schema(json.dumps(data), "s.json")


# ---------------------------------------------------------------------- a real model's review


@pytest.mark.framework
def test_one_changed_and_one_added_leaf_of_a_real_model_are_three_lines_of_diff(tmp_path):
    import flax.linen as nn
    import jax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(13):
                x = nn.LayerNorm()(nn.Dense(8)(x))
            return x

    params = Net().init(jax.random.key(0), np.ones((1, 4), F32))
    assert len(jax.tree.leaves(params)) == 52
    assert list(params["params"]) != sorted(params["params"])  # flax keeps creation order
    ckptschema.save(tmp_path / "a.safetensors", params)

    changed = jax.tree.map(lambda x: x, params)  # the same tree, its dict keys sorted
    assert list(changed["params"]) == sorted(params["params"])
    changed["params"]["Dense_3"]["kernel"] = np.zeros((8, 16), F32)
    changed["params"]["LayerNorm_7"]["offset"] = np.zeros(8, F32)
    ckptschema.save(tmp_path / "b.safetensors", changed)

    a = ckptschema.read_manifest(tmp_path / "a.safetensors").schema_document()
    b = ckptschema.read_manifest(tmp_path / "b.safetensors").schema_document()
    removed, added = _changed_lines(a, b)
    assert [line.split('"')[1] for line in removed] == ["/params/Dense_3/kernel"]
    assert [line.split('"')[1] for line in added] == ["/params/Dense_3/kernel", "/params/LayerNorm_7/offset"]
    assert '"float32[8,8] blake3:' in removed[0] and '"float32[8,16] blake3:' in added[0]
