"""docs/format.md is the contract a second implementation is written from: keep its tables and examples true.

Each test reads one table or example from the page and compares it with the code, so a
change to a dtype, a limit, a container or what `save` writes fails here until the page
says the same.
"""

from __future__ import annotations

import json
import pathlib
import re
import struct
from typing import Any

import numpy as np

import ckptschema
import ckptschema.flax
import ckptschema.objax
from ckptschema import _containers, _dtypes, _limits, _scalars

PAGE = (pathlib.Path(__file__).parent.parent / "docs" / "format.md").read_text(encoding="utf-8")


def _table(heading_row: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `heading_row`, cells stripped."""
    lines = PAGE[PAGE.index(heading_row) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _block_after(marker: str, language: str) -> str:
    """The first fenced block of `language` after the text `marker`."""
    start = PAGE.index(f"```{language}\n", PAGE.index(marker)) + len(language) + 4
    return PAGE[start : PAGE.index("```", start)]


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _header(path: pathlib.Path) -> dict[str, Any]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


def _ordered(data: Any) -> str:
    """JSON text that keeps key order, so two documents compare equal only with the same order."""
    return json.dumps(data)


def test_dtype_table_is_every_dtype_name_with_its_code_item_size_and_header_shape():
    rows = _table("| manifest `dtype` |")
    page = [(_names(name)[0], _names(code)[0], int(size), shape) for name, code, size, shape in rows]
    expected = []
    for name in _dtypes.ALL_DTYPE_NAMES:
        dtype = _dtypes.DTYPES[name]
        shape = f"`S + [{dtype.numpy.itemsize}]`" if dtype.header_shape([]) else "`S`"
        expected.append((name, dtype.code, dtype.numpy.itemsize, shape))
    assert page == expected


def test_sub_byte_dtypes_named_on_the_page_are_those_with_value_bits():
    rule = PAGE[PAGE.index("16. A tensor of a sub-byte dtype") : PAGE.index("17. With verification")]
    assert set(_names(rule)) == {name for name, d in _dtypes.DTYPES.items() if d.bits is not None}


def test_limits_table_is_every_constant_of_the_limits_module_with_its_value():
    rows = _table("| constant | value | what it bounds |")
    page = {_names(name)[0]: eval(value.replace(",", "")) for name, value, _ in rows}
    expected = {name: value for name, value in vars(_limits).items() if name.startswith("MAX_")}
    assert page == expected


def test_allow_list_table_is_every_registered_container_with_its_kind():
    rows = _table("| name | kind | built as")
    page = {name: _names(kind)[0] for names, kind, _, _ in rows for name in _names(names)}
    built_in = ("collections", "jax", "flax", "objax")  # not the containers tests register for themselves
    expected = {c.name: c.kind for c in _containers._REGISTRY.values() if c.name.partition(".")[0] in built_in}
    assert page == expected


def test_allow_list_table_names_the_mappings_of_the_file_rules():
    rows = _table("| name | kind | built as")
    assert {name for names, kind, _, _ in rows for name in _names(names) if kind == "`dict`"} == _containers.MAPPINGS


def test_allow_list_table_gives_each_wrapper_its_metadata_keys_and_types():
    json_type = {str: "string", bool: "boolean"}
    rows = _table("| name | kind | built as")
    for names, kind, _, metadata in rows:
        if kind != "`wrapper`":
            continue
        allowed = _containers.WRAPPER_METADATA[_names(names)[0].partition(".")[0]]
        page = dict(re.findall(r"`(\w+)`: (\w+)", metadata))
        assert page == {key: json_type[t] for key, t in allowed.items()}, names


def test_prng_key_table_is_every_implementation_with_its_key_shape():
    rows = _table("| `impl` | key shape |")
    page = {_names(impl)[0]: eval(_names(shape)[0]) for impl, shape, *_ in rows}
    assert page == _containers.PRNG_KEY_SHAPES


def test_complete_example_header_is_what_save_writes(tmp_path):
    _save_complete_example(tmp_path / "t.safetensors")
    header = _header(tmp_path / "t.safetensors")
    header["__metadata__"]["ckptschema"] = "..."
    assert _ordered(header) == _ordered(json.loads(_block_after("gives this header", "json")))


def test_complete_example_manifest_is_what_save_writes(tmp_path):
    _save_complete_example(tmp_path / "t.safetensors")
    manifest = json.loads(_header(tmp_path / "t.safetensors")["__metadata__"]["ckptschema"])
    assert _ordered(manifest) == _ordered(json.loads(_block_after("and this manifest", "json")))


def test_byte_layout_header_is_an_excerpt_of_the_complete_example(tmp_path):
    _save_complete_example(tmp_path / "t.safetensors")
    header = _header(tmp_path / "t.safetensors")
    excerpt = json.loads(_block_after("plus the optional `__metadata__` entry", "json"))
    assert excerpt.pop("__metadata__")["author"] == header["__metadata__"]["author"]
    assert {key: header[key] for key in excerpt} == excerpt


def test_nnx_wrapper_example_is_how_an_nnx_linear_state_is_saved():
    from flax import nnx

    manifest = ckptschema.manifest_of(nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), checksum=None)
    page = json.loads(_block_after("is saved as (digests left out)", "json"))
    assert _ordered(manifest.data["skeleton"]) == _ordered(page)


def test_float_spellings_on_the_page_are_what_save_writes():
    spelled = {"0.1": 0.1, "-0.0": -0.0, "1e+16": 1e16, "1e-05": 1e-05, "inf": float("inf"), "-inf": float("-inf")}
    assert [_scalars.float_text(v) for v in spelled.values()] == list(spelled)
    assert _scalars.float_text(-float("nan")) == "nan:0xfff8000000000000"
    assert _scalars.float_text(_scalars.float_value("nan:0x7ff0000000000001")) == "nan:0x7ff0000000000001"


def _save_complete_example(path: pathlib.Path) -> None:
    """Build the page's complete example tree from its own code, and save it as the page says."""
    code = _block_after("This tree", "python")
    build, _, call = code.partition("ckptschema.save(")
    import collections

    import jax.numpy as jnp
    import ml_dtypes

    namespace: dict[str, Any] = {"collections": collections, "np": np, "jnp": jnp, "ml_dtypes": ml_dtypes}
    exec(build, namespace)
    assert call.startswith('"t.safetensors", tree, metadata={"author": "me"})'), call
    ckptschema.save(path, namespace["tree"], metadata={"author": "me"})
