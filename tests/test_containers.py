"""Container nodes in hostile files: each name's kind, wrapper metadata and key data, namedtuples.

Every case starts from a file ckptschema wrote and changes its manifest so that it still
agrees with the header; each must give one `FormatError` naming the file and the path, from
every reader (load with and without a template, read_manifest, validate), before any
framework object is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import ckptschema
from ckptschema import CkptSchemaError, FormatError
from ckptschema._containers import _REGISTRY, MAPPINGS, WRAPPER_METADATA
from ckptschema._limits import MAX_METADATA

from .make_corpus import pack, split

Edit = Callable[[dict[str, Any]], None]


def _hostile(tmp_path: Path, tree: dict[str, Any], edit: Edit) -> Path:
    """`tree` saved, then its skeleton edited (the header's tensors are unchanged)."""
    header, body = split(ckptschema.dumps(tree, checksum=None))
    manifest = json.loads(header["__metadata__"]["ckptschema"])
    edit(manifest["skeleton"])
    header["__metadata__"]["ckptschema"] = json.dumps(manifest, separators=(",", ":"))
    path = tmp_path / "m.safetensors"
    path.write_bytes(pack(header, body))
    return path


def _assert_refused(path: Path, message: str, template: Any = None) -> None:
    """Every reader refuses the file with exactly `message` after the file name."""
    readers = [ckptschema.load, ckptschema.read_manifest, ckptschema.validate]
    if template is not None:
        readers.append(lambda p: ckptschema.load(p, template=template))
    for read in readers:
        with pytest.raises(FormatError) as info:
            read(path)
        assert str(info.value) == f"{path}: invalid manifest: {message}"


def _wrap(type_name: str, metadata: dict[str, Any], key: str = "k") -> Edit:
    """Put the child at `key` of the root dict inside a wrapper."""

    def edit(skeleton: dict[str, Any]) -> None:
        i = skeleton["keys"].index(key)
        skeleton["children"][i] = {
            "kind": "wrapper",
            "type": type_name,
            "metadata": metadata,
            "child": skeleton["children"][i],
        }

    return edit


def _retype(key: str, type_name: str) -> Edit:
    """Give the dict at `key` of the root dict a container type."""

    def edit(skeleton: dict[str, Any]) -> None:
        skeleton["children"][skeleton["keys"].index(key)]["type"] = type_name

    return edit


KEY_DATA = {"k": np.array([0, 42], np.uint32)}

# ------------------------------------------------------------- jax.random.key wrappers


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({}, "has no metadata 'impl' naming its PRNG implementation"),
        ({"impl": "nope"}, "names the PRNG implementation 'nope'; the format knows: threefry2x32, rbg, unsafe_rbg"),
        ({"impl": 3}, "has metadata impl=3; it must be a str"),
        (
            {"impl": "threefry2x32", "seed": 1},
            "has metadata 'seed', which its wrappers do not hold (the format allows: impl)",
        ),
    ],
)
def test_prng_key_wrapper_with_bad_impl_is_refused(tmp_path, metadata, problem):
    path = _hostile(tmp_path, KEY_DATA, _wrap("jax.random.key", metadata))
    _assert_refused(path, f"container type 'jax.random.key' at k {problem}", template=KEY_DATA)


@pytest.mark.parametrize(
    ("data", "found", "impl", "shape"),
    [
        (np.zeros(3, np.uint32), "uint32[3]", "threefry2x32", "2"),
        (np.zeros(2, np.int32), "int32[2]", "threefry2x32", "2"),
        (np.zeros((2, 2), np.uint32), "uint32[2,2]", "rbg", "4"),
        (np.zeros((), np.uint32), "uint32[]", "threefry2x32", "2"),
    ],
)
def test_prng_key_wrapper_with_key_data_of_wrong_shape_or_dtype_is_refused(tmp_path, data, found, impl, shape):
    path = _hostile(tmp_path, {"k": data}, _wrap("jax.random.key", {"impl": impl}))
    _assert_refused(
        path, f"container type 'jax.random.key' at k holds {found}; {impl} key data is uint32 of shape (..., {shape})"
    )


def test_prng_key_wrapper_around_a_non_tensor_is_refused(tmp_path):
    path = _hostile(tmp_path, {"k": None}, _wrap("jax.random.key", {"impl": "threefry2x32"}))
    _assert_refused(
        path,
        "container type 'jax.random.key' at k holds a none node; threefry2x32 key data is uint32 of shape (..., 2)",
    )


# ------------------------------------------------------------------ each name's own kind


@pytest.mark.parametrize("name", ["jax.random.key", "flax.nnx.Param", "objax.TrainVar", "objax.StateVar"])
def test_dict_node_naming_a_wrapper_type_is_refused(tmp_path, name):
    tree = {"d": {"w": np.ones(2, np.float32)}}
    path = _hostile(tmp_path, tree, _retype("d", name))
    _assert_refused(
        path,
        f"container type {name!r} at d is a one-child wrapper, not a mapping: a dict node cannot name it",
        template=tree,
    )


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_wrapper_naming_a_mapping_type_is_refused(tmp_path, name):
    tree = {"k": np.ones(2, np.float32)}
    path = _hostile(tmp_path, tree, _wrap(name, {}))
    _assert_refused(
        path,
        f"container type {name!r} at k is a mapping, not a one-child wrapper: a wrapper node cannot name it",
        template=tree,
    )


@pytest.mark.framework
def test_every_registered_container_has_the_kind_the_file_rules_give_it():
    import ckptschema.flax
    import ckptschema.objax  # noqa: F401  (both register their containers)

    tops = ("collections", "jax", "flax", "objax")
    ours = {name: c for name, c in _REGISTRY.items() if name.partition(".")[0] in tops}
    assert {name for name, c in ours.items() if c.kind == "dict"} == MAPPINGS
    assert {name.partition(".")[0] for name, c in ours.items() if c.kind == "wrapper"} <= set(WRAPPER_METADATA)


class _Box:
    """A user's one-child container, registered as a wrapper with one metadata key."""

    def __init__(self, value, unit="m"):
        self.value, self.unit = value, unit


def test_a_user_registered_wrapper_round_trips_with_its_declared_metadata():
    jax.tree_util.register_pytree_node(_Box, lambda b: ((b.value,), b.unit), lambda unit, c: _Box(c[0], unit))
    ckptschema.register_container(
        ckptschema.Container(
            name="tests.Box",
            framework="tests",
            kind="wrapper",
            match=lambda obj: type(obj) is _Box,
            build=lambda child, metadata: _Box(child, metadata["unit"]),
            unwrap=lambda box: box.value,
            metadata=lambda box: {"unit": box.unit},
            metadata_types={"unit": str},
        )
    )
    loaded = ckptschema.loads(ckptschema.dumps({"d": _Box(np.arange(3.0), "km")}))
    assert (type(loaded["d"]), loaded["d"].unit, loaded["d"].value.tolist()) == (_Box, "km", [0.0, 1.0, 2.0])


def test_a_framework_container_of_the_wrong_kind_cannot_be_registered():
    wrong = ckptschema.Container(name="flax.Fake", framework="flax", kind="dict", match=bool, build=dict)
    with pytest.raises(ValueError, match="disagrees with MAPPINGS"):
        ckptschema.register_container(wrong)


# -------------------------------------------------------------- nnx and objax metadata


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"value": 1}, "has metadata 'value', which its wrappers do not hold"),
        ({"sharding_names": "a"}, "has metadata 'sharding_names', which its wrappers do not hold"),
        ({"on_get_value": "print"}, "has metadata 'on_get_value', which its wrappers do not hold"),
        ({"hijax": "yes"}, "has metadata hijax='yes'; it must be a bool"),
        ({"tag": 1}, "has metadata tag=1; it must be a str"),
        ({"ref": None}, "has metadata ref=None; it must be a bool"),
    ],
)
def test_nnx_wrapper_metadata_outside_the_format_is_refused(tmp_path, metadata, problem):
    tree = {"k": np.ones(2, np.float32)}
    path = _hostile(tmp_path, tree, _wrap("flax.nnx.Param", metadata))
    allowed = " (the format allows: eager_sharding, hijax, ref, tag)" if "which" in problem else ""
    _assert_refused(path, f"container type 'flax.nnx.Param' at k {problem}{allowed}", template=tree)


def test_nnx_wrapper_with_ref_around_a_string_is_refused(tmp_path):
    path = _hostile(tmp_path, {"k": "text"}, _wrap("flax.nnx.Param", {"ref": True}))
    _assert_refused(
        path,
        "container type 'flax.nnx.Param' at k sets hijax or ref around a value that is not a tensor, "
        "a number or a PRNG key",
    )


def test_objax_wrapper_with_metadata_is_refused(tmp_path):
    path = _hostile(tmp_path, {"k": np.ones(2, np.float32)}, _wrap("objax.TrainVar", {"reduce": "x"}))
    _assert_refused(
        path,
        "container type 'objax.TrainVar' at k has metadata 'reduce', which its wrappers do not hold "
        "(the format allows: none)",
    )


@pytest.mark.framework
def test_nnx_wrapper_with_documented_metadata_loads(tmp_path):
    metadata = {"eager_sharding": False, "hijax": False, "ref": False, "tag": "dropout"}
    path = _hostile(tmp_path, {"k": np.ones(2, np.float32)}, _wrap("flax.nnx.RngCount", metadata))
    loaded = ckptschema.load(path)["k"]
    assert type(loaded).__name__ == "RngCount" and loaded.get_metadata() == metadata


def test_wrapper_metadata_over_max_metadata_is_refused_naming_the_limit(tmp_path):
    # Maps of millions of entries are refused sooner (MAX_UNKNOWN_KEYS), within a CPU-time bound: tests/test_hostile.py.
    metadata = {f"m{i}": i for i in range(1_000)}
    path = _hostile(tmp_path, {"k": np.ones(2, np.float32)}, _wrap("flax.nnx.Param", metadata))
    with pytest.raises(FormatError, match=f"wrapper metadata has 1000 entries, more than MAX_METADATA={MAX_METADATA}"):
        ckptschema.load(path)


# ----------------------------------------------------------------------------- namedtuples


def _namedtuple(name: str, fields: list[str], **extra: Any) -> Edit:
    def edit(skeleton: dict[str, Any]) -> None:
        i = skeleton["keys"].index("t")
        skeleton["children"][i] = {
            "kind": "namedtuple",
            "name": name,
            "fields": fields,
            "children": [{"kind": "none"}] * len(fields),
            **extra,
        }

    return edit


@pytest.mark.parametrize(
    "fields",
    [["fi", "\ufb01"], ["\uff49\uff46"], ["\uff3fcls"]],
    ids=["ligature-collides", "fullwidth-keyword", "fullwidth-underscore"],
)
def test_namedtuple_fields_that_python_would_compile_differently_are_refused(tmp_path, fields):
    path = _hostile(tmp_path, {"t": None}, _namedtuple("P", fields))
    with pytest.raises(FormatError, match="equal after Unicode NFKC normalisation") as info:
        ckptschema.load(path)
    assert str(info.value).startswith(f"{path}: invalid manifest: ")


@pytest.mark.parametrize("module", ["os; rm -rf", "", "a..b", "1abc"])
def test_namedtuple_naming_something_that_is_not_a_module_name_is_refused(tmp_path, module):
    path = _hostile(tmp_path, {"t": None}, _namedtuple("P", ["a"], module=module))
    with pytest.raises(FormatError, match=f"names the module {re.escape(repr(module))}, which is not a module name"):
        ckptschema.load(path)


def test_namedtuple_naming_an_importable_module_imports_nothing(tmp_path):
    import sys

    assert "this" not in sys.modules  # the stdlib module that prints the Zen of Python on import
    path = _hostile(tmp_path, {"t": None}, _namedtuple("P", ["a"], module="this"))
    loaded = ckptschema.load(path)["t"]
    assert (type(loaded).__name__, loaded._fields) == ("P", ("a",))
    assert "this" not in sys.modules


def test_container_refusal_of_the_fuzzed_files_is_a_library_error(tmp_path):
    """The raw TypeErrors fuzzing found (a dict typed jax.random.key; a wrapper typed OrderedDict)."""
    for edit in (_retype("d", "jax.random.key"), _wrap("collections.OrderedDict", {}, key="d")):
        path = _hostile(tmp_path, {"d": {"w": np.ones(2, np.float32)}}, edit)
        with pytest.raises(CkptSchemaError):
            ckptschema.loads(path.read_bytes())


@pytest.mark.parametrize("edit", [_wrap("", {}), _retype("d", "")], ids=["wrapper", "dict"])
def test_an_empty_container_type_is_refused_by_every_reader(tmp_path, edit):
    path = _hostile(tmp_path, {"k": np.ones(2, np.float32), "d": {"w": np.ones(2, np.float32)}}, edit)
    where = "k" if edit.__qualname__.startswith("_wrap") else "d"
    _assert_refused(path, f"container type '' at {where} is not on the allow-list")
