"""Generate the adversarial corpus: files a hostile or careless source could hand the reader.

Every file is written into one directory together with ``cases.json``, which says for each
file which `CkptSchemaError` subclass the reader must raise and through which call. The
corpus is built from a small valid checkpoint (`valid_bytes`) by cutting, lying, nesting,
duplicating and corrupting, plus files crafted from scratch (pickle, zip, huge headers)
and special paths (a FIFO, ``/dev/zero``).

Usage::

    python tests/make_corpus.py OUT_DIR      # writes OUT_DIR/*.safetensors and cases.json

or, from a test, ``build_corpus(directory) -> list[Case]``.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: A module that must never be imported: manifests below name types inside it. Its only
#: effect on import is to create `SENTINEL_FILE` next to it, which the tests look for.
SENTINEL_MODULE = "ckpt_corpus_sentinel"
SENTINEL_FILE = "SENTINEL_WAS_IMPORTED"

Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass(frozen=True)
class Case:
    """One corpus file and what reading it must give.

    Attributes:
        name: unique, also the file name stem.
        path: the file (or special path) to read.
        error: the `ckptschema` error class name the reader must raise: ``FormatError``,
            ``IntegrityError`` or ``CkptSchemaError`` (any subclass).
        calls: which entry points must raise it: ``load`` (no template, verify=True),
            ``load_template`` (with the valid tree as template, verify=True),
            ``read_manifest``, ``validate`` (deep=True), ``load_noverify``.
        match: text the error message must contain (the limit or rule it names), or None.
    """

    name: str
    path: str
    error: str
    calls: tuple[str, ...]
    match: str | None = None


def _hex(name: str) -> str:
    """A file-name-safe spelling of a case parameter: dots as ``_``, other odd characters as ``uXXXX``."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "_-") else "_" if c == "." else f"u{ord(c):04x}" for c in name
    )


#: The calls that every header-level problem must fail.
ALL = ("load", "load_template", "read_manifest", "validate")
#: Problems only the tensor bytes show.
DATA = ("load", "load_template")


def valid_tree() -> dict[str, Any]:
    """The small tree every derived case starts from: several dtypes, containers and scalars."""
    import ml_dtypes

    return {
        "params": {
            "dense": {
                "kernel": np.arange(12, dtype=np.float32).reshape(4, 3),
                "bias": np.linspace(-1, 1, 3).astype(np.float32),
            },
            "emb": np.arange(10).reshape(5, 2).astype(ml_dtypes.bfloat16),
            "layers": [np.full((2,), 7, np.int8), np.array(3, np.int64)],
        },
        "step": 3,
        "opt": (np.ones((2,), np.float16), None, Point(x=np.array([1, 2], np.uint16), y=2.5)),
        "empty": np.zeros((0, 4), np.float32),
    }


def valid_bytes() -> bytes:
    """The valid checkpoint (blake3 checksums on)."""
    import ckptschema

    return ckptschema.dumps(valid_tree())


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A file's header as JSON data and its data section."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def pack(header: Any, body: bytes = b"", *, length: int | None = None, raw: bytes | None = None) -> bytes:
    """A safetensors file: 8-byte length, header (JSON of `header`, or `raw` bytes), `body`."""
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def _manifest_of(header: dict[str, Any]) -> dict[str, Any]:
    return json.loads(header["__metadata__"]["ckptschema"])


def _digests(m: dict[str, Any]) -> list[bytes]:
    """The manifest's 32-byte digests, in tensor order."""
    raw = base64.b64decode(m["digests"])
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


class _Builder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.valid = valid_bytes()
        self.cases: list[Case] = []

    def add(
        self,
        name: str,
        data: bytes,
        error: str = "FormatError",
        calls: tuple[str, ...] = ALL,
        match: str | None = None,
    ) -> None:
        path = self.directory / f"{name}.safetensors"
        path.write_bytes(data)
        self.cases.append(Case(name, str(path), error, calls, match))

    def header(self, name: str, edit: Callable[[dict[str, Any]], Any], **kw: Any) -> None:
        """A case made by editing the valid header's JSON data (data section kept)."""
        header, body = split(self.valid)
        edit(header)
        self.add(name, pack(header, body), **kw)

    def manifest(self, name: str, edit: Callable[[dict[str, Any]], Any], *, text: str | None = None, **kw: Any) -> None:
        """A case made by editing the manifest (or replacing its text outright)."""
        header, body = split(self.valid)
        if text is None:
            m = _manifest_of(header)
            edit(m)
            text = json.dumps(m, separators=(",", ":"))
        header["__metadata__"]["ckptschema"] = text
        self.add(name, pack(header, body), **kw)

    def manifest_text(self, name: str, edit: Callable[[str], str], **kw: Any) -> None:
        """A case made by editing the manifest's JSON text."""
        header, _ = split(self.valid)
        self.manifest(name, lambda m: None, text=edit(header["__metadata__"]["ckptschema"]), **kw)

    def tree(self, name: str, tree: Any, edit: Callable[[dict[str, Any]], Any], **kw: Any) -> None:
        """A case made by saving `tree` (no checksums) and editing its manifest's skeleton."""
        import ckptschema

        header, body = split(ckptschema.dumps(tree, checksum=None))
        m = _manifest_of(header)
        edit(m["skeleton"])
        header["__metadata__"]["ckptschema"] = json.dumps(m, separators=(",", ":"))
        self.add(name, pack(header, body), **kw)


def _b64(digests: list[bytes]) -> str:
    return base64.b64encode(b"".join(digests)).decode("ascii")


def _dict(items: dict[str, Any]) -> dict[str, Any]:
    """A plain dict node of a lean skeleton."""
    return {"kind": "dict", "type": None, "keys": list(items), "children": list(items.values())}


def _set_tensor(m: dict[str, Any], which: str, new: Any) -> None:
    """Replace the tensor leaf (a dtype name) at key `which` of the valid tree by `new`."""
    node = m["skeleton"]
    *parents, last = which.split(".")
    for part in parents:
        node = node["children"][node["keys"].index(part) if "keys" in node else int(part)]
    node["children"][node["keys"].index(last) if "keys" in node else int(last)] = new


def _deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _wrap(node: dict[str, Any], typ: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "wrapper", "type": typ, "metadata": metadata, "child": node}


def _wrap_first(typ: str, metadata: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """An edit that puts the first child of the root in a wrapper of type `typ`."""
    return lambda skel: skel["children"].__setitem__(0, _wrap(skel["children"][0], typ, metadata))


def _container_cases(b: _Builder) -> None:
    """Containers a file may not describe: PRNG keys, wrappers, typed dicts, namedtuple classes."""
    import jax

    key = {"k": jax.random.key(0)}
    for name, metadata in {
        "without_impl": {},
        "impl_unknown": {"impl": "nope"},
        "impl_not_string": {"impl": 3},
        "extra_metadata": {"impl": "threefry2x32", "seed": 1},
    }.items():
        b.tree(f"prng_key_{name}", key, lambda skel, metadata=metadata: skel["children"][0].update(metadata=metadata))
    for name, data, impl in [
        ("uint32_3_threefry", np.zeros(3, np.uint32), "threefry2x32"),
        ("uint32_2x2_rbg", np.zeros((2, 2), np.uint32), "rbg"),
        ("uint32_scalar", np.zeros((), np.uint32), "threefry2x32"),
        ("int32_2_threefry", np.zeros(2, np.int32), "threefry2x32"),
        ("none", None, "threefry2x32"),
    ]:
        b.tree(f"prng_key_data_{name}", {"k": data}, _wrap_first("jax.random.key", {"impl": impl}))
    for typ in ("jax.random.key", "flax.nnx.Param", "objax.TrainVar"):
        b.manifest(f"dict_typed_{_hex(typ)}", lambda m, typ=typ: m["skeleton"]["children"][0].update(type=typ))
    for typ in ("collections.OrderedDict", "flax.FrozenDict", "flax.nnx.State", "objax.VarCollection"):
        b.manifest(
            f"wrapper_typed_{_hex(typ)}",
            lambda m, typ=typ: m["skeleton"]["children"].__setitem__(0, _wrap(m["skeleton"]["children"][0], typ, {})),
        )
    leaf = {"k": np.zeros(2, np.float32)}
    for name, metadata in {
        "value": {"value": 1},
        "sharding_names": {"sharding_names": "a"},
        "on_get_value": {"on_get_value": "print"},
        "hijax_string": {"hijax": "yes"},
        "tag_int": {"tag": 1},
        "ref_null": {"ref": None},
    }.items():
        b.tree(f"nnx_metadata_{name}", leaf, _wrap_first("flax.nnx.Param", metadata))
    b.tree("nnx_ref_around_str_scalar", {"k": "s"}, _wrap_first("flax.nnx.Param", {"ref": True}))
    b.tree("objax_metadata_reduce", leaf, _wrap_first("objax.TrainVar", {"reduce": "x"}))
    many = {f"m{i}": 0 for i in range(65)}
    b.tree("wrapper_metadata_65_entries", leaf, _wrap_first("flax.nnx.Param", many), match="MAX_METADATA=64")
    huge = dict.fromkeys(map(str, range(1_900_000)), 0)
    b.tree(
        "wrapper_metadata_1900000_entries",
        leaf,
        _wrap_first("flax.nnx.Param", huge),
        match="MAX_UNKNOWN_KEYS=64",
    )
    spaced = '{"kind":"none","x":{' + ",".join(f'"{i}" :0' for i in range(1_900_000)) + "}}"
    b.manifest_text(
        "manifest_1900000_keys_spaced_from_colons",
        lambda t: t.replace('{"kind":"none"}', spaced, 1),
        match="MAX_UNKNOWN_KEYS=64",
    )
    for name, fields in {
        "nfkc_collision": ["fi", "\ufb01"],
        "fullwidth_keyword": ["\uff49\uff46"],
        "fullwidth_underscore": ["\uff3fcls"],
    }.items():
        b.manifest(
            f"namedtuple_fields_{name}",
            lambda m, fields=fields: m["skeleton"]["children"].__setitem__(
                3, {"kind": "namedtuple", "name": "P", "fields": fields, "children": [{"kind": "none"}] * len(fields)}
            ),
        )
    for name, module in {"shell": "os; rm -rf", "empty": "", "double_dot": "a..b", "leading_digit": "1abc"}.items():
        b.manifest(
            f"namedtuple_module_{name}",
            lambda m, module=module: m["skeleton"]["children"].__setitem__(
                3,
                {"kind": "namedtuple", "name": "P", "module": module, "fields": ["a"], "children": [{"kind": "none"}]},
            ),
        )


def _nested(depth: int, make: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "none"}
    for _ in range(depth):
        node = make(node)
    return node


def _manifest_limit_cases(b: _Builder) -> None:
    """Integers past MAX_INT_DIGITS, trees past MAX_DEPTH, NaNs spelled other than the one way."""
    digits = "MAX_INT_DIGITS=640"
    scalar = '{"kind":"scalar","type":"int","value":3}'
    for n in (641, 100_000):
        b.manifest_text(
            f"manifest_int_scalar_{n}_digits",
            lambda t, n=n: t.replace(scalar, scalar.replace("3", "9" * n), 1),
            match=digits,
        )
    b.tree(
        "manifest_dict_key_int_641_digits",
        {1: np.zeros(2, np.float32)},
        lambda skel: skel.update(keys=[int("9" * 641)]),
        match=digits,
    )
    b.tree(
        "wrapper_metadata_int_641_digits",
        {"k": np.zeros(2, np.float32)},
        _wrap_first("flax.nnx.Param", {"tag": int("9" * 641)}),
        match=digits,
    )
    header, body = split(b.valid)
    text = json.dumps(header, separators=(",", ":")).replace('"shape":[4,3]', '"shape":[' + "9" * 5000 + ",3]", 1)
    b.add("header_shape_dim_5000_digits", pack(None, raw=text.encode()) + body, match=digits)
    # Depth 251: the root is depth 0 and the replaced child depth 1, so 250 levels put the leaf at 251.
    for name, make in {
        "dicts": lambda c: {"kind": "dict", "type": None, "keys": ["a"], "children": [c]},
        "lists": lambda c: {"kind": "list", "children": [c]},
        "nnx_params": lambda c: _wrap(c, "flax.nnx.Param", {}),
    }.items():
        b.manifest(
            f"manifest_depth_251_{name}",
            lambda m, make=make: m["skeleton"]["children"].__setitem__(3, _nested(250, make)),
            match="MAX_DEPTH=250",
        )
    for name, spelling in {
        "canonical_bits": "nan:0x7ff8000000000000",
        "uppercase_hex": "nan:0xFFF8000000000000",
        "denormal_spelled_as_nan": "nan:0x0000000000000001",
        "short_hex": "nan:0xfff8",
        "minus_nan": "-nan",
    }.items():
        b.manifest(
            f"manifest_float_{name}",
            lambda m, spelling=spelling: m["skeleton"]["children"].__setitem__(
                1, {"kind": "scalar", "type": "float", "value": spelling}
            ),
        )


def _zero_size_header(count: int, metadata: bool) -> bytes:
    entries = b",".join(b'"%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count))
    return pack(None, raw=(b'{"__metadata__":{"format":"pt"},' if metadata else b"{") + entries + b"}")


def _storage_cases(b: _Builder) -> None:
    """Shapes past MAX_ELEMENTS, sub-byte values with high bits set, headers past MAX_TENSORS."""
    import ml_dtypes

    import ckptschema

    for name, shape in {"0_2e62_2e62": [0, 2**62, 2**62], "0_65536x5": [0] + [65536] * 5}.items():
        header, body = split(b.valid)
        header["empty"]["shape"] = shape
        b.add(f"zero_size_dims_{name}", pack(header, body), match="MAX_ELEMENTS=281474976710656")
    for dtype, byte in [
        ("int4", 0x10),
        ("uint4", 0x10),
        ("float4_e2m1fn", 0x10),
        ("int2", 0x04),
        ("uint2", 0x04),
        ("float6_e2m3fn", 0x40),
        ("float6_e3m2fn", 0x40),
    ]:
        data = bytearray(ckptschema.dumps({"k": np.zeros(4, getattr(ml_dtypes, dtype))}, checksum=None))
        data[-4] = byte
        b.add(f"sub_byte_high_bits_{dtype}", bytes(data), calls=("load", "load_noverify"), match="bits set above")
    for metadata in (False, True):
        b.add(
            "zero_size_tensors_300001" + ("_with_metadata" if metadata else ""),
            _zero_size_header(300_001, metadata),
            match="MAX_TENSORS=300000",
        )


def build_corpus(directory: str | os.PathLike[str]) -> list[Case]:
    """Write every corpus file into `directory` and return the cases (also in ``cases.json``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    b = _Builder(d)
    valid = b.valid
    header, body = split(valid)
    (hlen,) = struct.unpack("<Q", valid[:8])

    # -- truncations: every offset of the length prefix, then across header and data.
    offsets = sorted(
        set(range(0, 9)) | set(range(9, len(valid), max(1, len(valid) // 40))) | {8 + hlen, len(valid) - 1}
    )
    for cut in offsets:
        b.add(f"truncated_at_{cut}", valid[:cut])
    b.add("appended_garbage", valid + b"\0" * 7)

    # -- lying header lengths, up to 2**64-1.
    for length in (
        0,
        1,
        2,
        7,
        hlen - 1,
        hlen + 1,
        hlen + 8,
        len(valid),
        100_000_001,
        2**31,
        2**32 + hlen,
        2**63,
        2**64 - 1,
    ):
        b.add(f"header_length_{length}", pack(None, raw=valid[8 : 8 + hlen], length=length) + body)

    # -- not JSON, not UTF-8, odd bytes.
    for name, raw in {
        "not_json": b"this is not json at all",
        "json_array": b"[1, 2, 3]",
        "json_string": b'"hello"',
        "json_null": b"null",
        "unterminated": b'{"a": {"dtype": "F32"',
        "latin1": '{"caf\xe9": 1}'.encode("latin-1"),
        "invalid_utf8": b'{"a\xff\xfe": {}}',
        "utf16": '{"a": 1}'.encode("utf-16"),
        "bom_utf8": b'\xef\xbb\xbf{"__metadata__": {}}',
        "nul_bytes": b"\0" * 32,
        "nul_inside": b'{"__metadata__": {}}\0\0\0\0',
        "leading_space": b' {"__metadata__": {}}',
        "trailing_garbage": b'{"__metadata__": {}}x',
        "nan": b'{"a": NaN}',
        "infinity": b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 0]}}',
        "float_shape": b'{"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 6]}}',
        "huge_exponent": b'{"a": {"dtype": "F32", "shape": [1e999999], "data_offsets": [0, 0]}}',
        "digits_5000": b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}',
        "lone_surrogate_key": b'{"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}',
        "deep_header_array": b'{"a": ' + _deep(100_000).encode() + b"}",
        "deep_header_object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "deep_metadata": b'{"__metadata__": {"x": ' + _deep(50_000, '"s"').encode() + b"}}",
    }.items():
        b.add(f"header_{name}", pack(None, raw=raw))

    # -- the safetensors header itself: duplicates, bad entries, offsets, dtypes, shapes.
    k = "params.dense.kernel"
    dup = split(valid)[0]
    text = json.dumps(dup, separators=(",", ":"))
    entry = json.dumps(dup[k], separators=(",", ":"))
    b.add("duplicate_tensor_key", pack(None, raw=text[:-1].encode() + f',"{k}":{entry}}}'.encode()) + body)
    b.add("duplicate_metadata_key", pack(None, raw=b'{"__metadata__":{"a":"1","a":"2"}}'))
    b.add(
        "duplicate_field",
        pack(None, raw=b'{"t":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}}') + b"\0" * 4,
    )
    edits: dict[str, Callable[[dict[str, Any]], Any]] = {
        "metadata_not_object": lambda h: h.update(__metadata__=[1]),
        "metadata_int_value": lambda h: h["__metadata__"].update(x=1),
        "entry_not_object": lambda h: h.update({k: [1, 2]}),
        "entry_extra_field": lambda h: h[k].update(extra=1),
        "entry_missing_offsets": lambda h: h[k].pop("data_offsets"),
        "unknown_dtype": lambda h: h[k].update(dtype="F128"),
        "lowercase_dtype": lambda h: h[k].update(dtype="f32"),
        "dtype_not_string": lambda h: h[k].update(dtype=7),
        "negative_dim": lambda h: h[k].update(shape=[-4, -3]),
        "bool_dim": lambda h: h[k].update(shape=[True, 3]),
        "string_dim": lambda h: h[k].update(shape=["4", 3]),
        "shape_not_list": lambda h: h[k].update(shape=12),
        "shape_overflow_int64": lambda h: h[k].update(shape=[2**32, 2**32, 2**32]),
        "shape_overflow_to_zero": lambda h: h[k].update(shape=[2**62, 4, 0, 2**62]),
        "rank_5000": lambda h: h[k].update(shape=[1] * 5000),
        "rank_65": lambda h: h[k].update(shape=[1] * 65),
        "offsets_reversed": lambda h: h[k].update(data_offsets=h[k]["data_offsets"][::-1]),
        "offsets_negative": lambda h: h[k].update(data_offsets=[-48, 0]),
        "offsets_three": lambda h: h[k].update(data_offsets=[0, 48, 96]),
        "offsets_floats": lambda h: h[k].update(data_offsets=[0.0, 48.0]),
        "offsets_out_of_range": lambda h: h[k].update(data_offsets=[10**6, 10**6 + 48]),
        "offsets_2_64": lambda h: h[k].update(data_offsets=[2**64 - 48, 2**64]),
        "offsets_overlap": lambda h: h["params.dense.bias"].update(
            data_offsets=h[k]["data_offsets"][:1] * 1 + [h[k]["data_offsets"][0] + 12]
        ),
        "offsets_gap": lambda h: [
            e.update(data_offsets=[e["data_offsets"][0] + 4, e["data_offsets"][1] + 4])
            for key, e in h.items()
            if key != "__metadata__"
        ],
        "offsets_all_zero": lambda h: [
            e.update(data_offsets=[0, e["data_offsets"][1] - e["data_offsets"][0]])
            for key, e in h.items()
            if key != "__metadata__"
        ],
        "dtype_wider": lambda h: h[k].update(dtype="F64"),
        "tensor_removed": lambda h: h.pop("params.emb") and None,
        "metadata_key_as_tensor": lambda h: h.update(
            __metadata__={"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
        ),
    }
    for name, edit in edits.items():
        b.header(name, edit)

    # -- millions of zero-size tensors in a header under the byte cap; a huge metadata map.
    many = b"{" + b",".join(b'"%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(800_000)) + b"}"
    b.add("zero_size_tensors_800000", pack(None, raw=many))
    b.add(
        "empty_lists_10m",
        pack(None, raw=b'{"a":{"dtype":"U8","shape":[' + b"[]," * 10_000_000 + b'[]],"data_offsets":[0,0]}}'),
    )
    b.add("short_strings_10m", pack(None, raw=b'{"__metadata__":{"x":"y"},"a":[' + b'"ab",' * 10_000_000 + b'"ab"]}'))
    b.add(
        "floats_10m",
        pack(None, raw=b'{"a":{"dtype":"U8","shape":[' + b"1e1," * 10_000_000 + b'1],"data_offsets":[0,0]}}'),
    )
    b.add(
        "metadata_entries_5m",
        pack(None, raw=b'{"__metadata__":{' + b",".join(b'"%d":""' % i for i in range(5_000_000)) + b"}}"),
    )

    # -- the manifest: bad JSON, versions, types, nesting, sizes.
    b.manifest("manifest_not_json", lambda m: None, text="{not json")
    b.manifest("manifest_empty", lambda m: None, text="")
    b.manifest("manifest_array", lambda m: None, text="[]")
    b.manifest(
        "manifest_nan",
        lambda m: None,
        text=header["__metadata__"]["ckptschema"].replace('"version":1', '"version":NaN'),
    )
    b.manifest_text("manifest_nan_tensor", lambda t: t.replace('"float32"', "NaN", 1))
    b.manifest_text("manifest_duplicate_key", lambda t: t.replace('"version":1', '"version":1,"version":1'))
    b.manifest_text(
        "manifest_duplicate_node_field", lambda t: t.replace('"kind":"scalar"', '"kind":"scalar","kind":"scalar"', 1)
    )
    b.manifest_text("manifest_bool_tensor", lambda t: t.replace('"float32"', "true", 1))
    b.manifest_text("manifest_number_tensor", lambda t: t.replace('"float32"', "4.0", 1))
    b.manifest_text("manifest_header_code_as_dtype", lambda t: t.replace('"float32"', '"F32"', 1))
    b.manifest_text("manifest_lone_surrogate", lambda t: t.replace('"keys":["params"', '"keys":["\\udc80params"', 1))
    b.manifest_text("manifest_bom", lambda t: "\ufeff" + t)
    b.manifest_text("manifest_nul", lambda t: t + "\0")
    b.manifest_text("manifest_trailing_data", lambda t: t + "{}")
    b.manifest("manifest_future_version", lambda m: m.update(version=2))
    b.manifest("manifest_version_bool", lambda m: m.update(version=True))
    b.manifest("manifest_version_string", lambda m: m.update(version="1"))
    b.manifest("manifest_version_missing", lambda m: m.pop("version"))
    b.manifest("manifest_unknown_field", lambda m: m.update(extra={"x": 1}))
    b.manifest("manifest_unknown_checksum", lambda m: m.update(checksum="md5"))
    b.manifest("manifest_digests_not_base64", lambda m: m.update(digests="zz"))
    b.manifest("manifest_digests_hex", lambda m: m.update(digests=b"".join(_digests(m)).hex()))
    b.manifest("manifest_digests_one_short", lambda m: m.update(digests=_b64(_digests(m)[:-1])))
    b.manifest("manifest_digests_one_more", lambda m: m.update(digests=_b64([*_digests(m), b"\0" * 32])))
    b.manifest("manifest_digests_half_a_digest", lambda m: m.update(digests=_b64([*_digests(m), b"\0" * 16])))
    b.manifest("manifest_digests_not_canonical", lambda m: m.update(digests=m["digests"][:-2] + "B="))
    b.manifest("manifest_digests_without_checksum", lambda m: m.update(checksum=None))
    b.manifest("manifest_checksum_without_digests", lambda m: m.pop("digests"))
    b.manifest("manifest_tensor_as_full_node", lambda m: _set_tensor(m, k, {"kind": "tensor", "dtype": "float32"}))
    b.manifest("manifest_scalar_bool_as_int", lambda m: m["skeleton"]["children"][1].update(value=True))
    b.manifest("manifest_scalar_nan_float", lambda m: m["skeleton"]["children"][1].update(type="float", value="nan "))
    b.manifest("manifest_unknown_kind", lambda m: m["skeleton"].update(kind="pickle"))
    b.manifest("manifest_skeleton_list", lambda m: m.update(skeleton=[]))
    b.manifest("manifest_keys_mismatch", lambda m: m["skeleton"]["keys"].pop())
    b.manifest(
        "manifest_duplicate_dict_keys", lambda m: m["skeleton"].update(keys=["params", "params", "opt", "empty"])
    )
    b.manifest("manifest_mixed_key_types", lambda m: m["skeleton"].update(keys=["params", 1, "opt", "empty"]))

    nested = '{"kind":"list","children":[' * 100_000 + '{"kind":"none"}' + "]}" * 100_000
    b.manifest_text("manifest_deep_json_100000", lambda t: t.replace('{"kind":"none"}', nested, 1))
    skel = '{"kind":"list","children":[' * 300 + '{"kind":"none"}' + "]}" * 300
    b.manifest_text("manifest_deep_tree_300", lambda t: t.replace('{"kind":"none"}', skel, 1))
    wrapped = '{"kind":"wrapper","type":"flax.nnx.Param","metadata":{},"child":' * 5000 + '{"kind":"none"}' + "}" * 5000
    b.manifest_text("manifest_deep_wrappers_5000", lambda t: t.replace('{"kind":"none"}', wrapped, 1))
    b.manifest_text(
        "manifest_deep_framework", lambda t: t.replace('"framework":"jax"', '"framework":' + _deep(100_000), 1)
    )
    fields = [f"f{i}" for i in range(400_000)]
    b.manifest(
        "manifest_namedtuple_400k_fields",
        lambda m: m["skeleton"]["children"].__setitem__(
            3, {"kind": "namedtuple", "name": "Big", "fields": fields, "children": [{"kind": "none"}] * len(fields)}
        ),
    )
    b.manifest(
        "manifest_list_2m_nones",
        lambda m: m["skeleton"]["children"].__setitem__(
            3, {"kind": "list", "children": [{"kind": "none"}] * 2_000_000}
        ),
    )
    b.manifest(
        "manifest_list_1m_empty_lists",
        lambda m: m["skeleton"]["children"].__setitem__(
            3, {"kind": "list", "children": [{"kind": "list", "children": []}] * 1_000_000}
        ),
    )
    b.manifest_text(
        "manifest_empty_arrays_10m",
        lambda t: t.replace('"framework":"jax"', '"framework":[' + "[]," * 10_000_000 + "[]]", 1),
    )

    # -- manifest and header disagree.
    b.manifest("disagree_dtype", lambda m: _set_tensor(m, k, "int32"))
    b.manifest("disagree_dtype_same_width", lambda m: _set_tensor(m, k, "uint32"))
    b.manifest("disagree_stored_as_bytes", lambda m: _set_tensor(m, k, "int4"))
    b.manifest("disagree_trailing_axis", lambda m: _set_tensor(m, "params.layers.0", "complex64"))
    b.manifest("disagree_bytes_for_uint8", lambda m: _set_tensor(m, "params.layers.0", "uint8"))
    b.manifest("manifest_missing_tensor", lambda m: m["skeleton"]["children"][0]["children"][0]["children"].pop())
    b.manifest(
        "manifest_extra_tensor",
        lambda m: m["skeleton"]["children"][0]["children"][0]["children"].append("float32"),
    )
    b.tree(
        "manifest_two_paths_one_key",
        {"a.b": np.zeros(1, np.float32), "c": np.zeros(1, np.float32)},
        lambda s: s.update(keys=["a.b", "a"], children=[s["children"][0], _dict({"b": "float32"})]),
    )
    b.manifest("manifest_key_not_its_path", lambda m: m["skeleton"]["children"][0]["keys"].__setitem__(0, "attack"))
    b.manifest("manifest_separator_changed", lambda m: m.update(separator="/"))

    # -- hostile type names: none may be imported or called; the sentinel proves it.
    for where, typ in [
        ("dict", "os.system"),
        ("dict", "builtins.eval"),
        ("dict", f"{SENTINEL_MODULE}.Evil"),
        ("dict", "flax.NotAContainer"),
        ("dict", "subprocess.Popen"),
        ("dict", "__import__"),
        ("wrapper", "builtins.exec"),
        ("wrapper", f"{SENTINEL_MODULE}.Var"),
        ("wrapper", "objax.os.system"),
        ("node", "subprocess.Popen"),
        ("node", f"{SENTINEL_MODULE}.Module"),
        ("node", "os.system"),
    ]:

        def edit(m: dict[str, Any], where: str = where, typ: str = typ) -> None:
            params = m["skeleton"]["children"][0]
            if where == "dict":
                params["type"] = typ
            elif where == "wrapper":
                m["skeleton"]["children"][0] = {
                    "kind": "wrapper",
                    "type": typ,
                    "metadata": {"cmd": "touch /tmp/pwned"},
                    "child": params,
                }
            else:
                params.update(kind="node", type=typ)

        # A name under a framework in the adapter table (flax., objax.) passes the parse-time
        # allow-list check and fails only when a template-less load looks it up; with a
        # template, the template's own types are used and the name is never looked up.
        framework_name = typ.partition(".")[0] in ("flax", "objax")
        calls = (
            ("load",) if where == "node" or framework_name else ("load", "load_template", "read_manifest", "validate")
        )
        b.manifest(f"hostile_{where}_{typ.replace('.', '_')}", edit, error="CkptSchemaError", calls=calls)
    for name in ("os.system", "__import__", f"{SENTINEL_MODULE}.Evil", "Evil(", "class"):
        b.manifest(
            f"hostile_namedtuple_{name.replace('.', '_').replace('(', '')}",
            lambda m, name=name: m["skeleton"]["children"].__setitem__(
                3, {"kind": "namedtuple", "name": name, "fields": ["a"], "children": [{"kind": "none"}]}
            ),
        )
    b.manifest(
        "hostile_namedtuple_field_dunder",
        lambda m: m["skeleton"]["children"].__setitem__(
            3, {"kind": "namedtuple", "name": "P", "fields": ["__class__"], "children": [{"kind": "none"}]}
        ),
    )

    # -- bit flips in tensor data: caught by verify=True and validate(deep=True).
    data_start = 8 + hlen
    for key in ("params.dense.kernel", "params.emb", "opt.0", "params.layers.1"):
        e = header[key]
        for bit in (0, 7):
            flipped = bytearray(valid)
            flipped[data_start + e["data_offsets"][0] + (bit % (e["data_offsets"][1] - e["data_offsets"][0]))] ^= (
                1 << bit
            )
            b.add(f"bitflip_{key}_{bit}", bytes(flipped), error="IntegrityError", calls=DATA)
    b.manifest(
        "digests_of_two_tensors_swapped",
        lambda m: m.update(digests=_b64([_digests(m)[1], _digests(m)[0], *_digests(m)[2:]])),
        error="IntegrityError",
        calls=DATA,
    )

    # -- other formats disguised as .safetensors.
    b.add("pickle", pickle.dumps({"w": [1.0, 2.0, 3.0]}, protocol=4))
    b.add("pickle_reduce", b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    b.add("zip_torch_style", zbuf.getvalue())
    b.add(
        "numpy_npy",
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
        + b" " * 50
        + b"\n"
        + b"\0" * 12,
    )
    b.add("empty_file", b"")
    b.add("html", b"<!doctype html><html><body>404 Not Found</body></html>")
    b.add("gzip", b"\x1f\x8b\x08\x00" + b"\0" * 60)

    _container_cases(b)
    _manifest_limit_cases(b)
    _storage_cases(b)

    # -- special paths: a directory, a FIFO and a device must not hang or be read endlessly.
    fifo = d / "fifo.safetensors"
    if not fifo.exists():
        os.mkfifo(fifo)
    b.cases.append(Case("fifo", str(fifo), "FormatError", ALL))
    b.cases.append(Case("dev_zero", "/dev/zero", "FormatError", ALL))
    b.cases.append(Case("dev_urandom", "/dev/urandom", "FormatError", ALL))
    (d / "a_directory.safetensors").mkdir(exist_ok=True)
    b.cases.append(Case("directory", str(d / "a_directory.safetensors"), "FormatError", ALL))
    b.cases.append(Case("missing_file", str(d / "does_not_exist.safetensors"), "FormatError", ALL))
    (d / "sentinel_dir").mkdir(exist_ok=True)
    (d / "sentinel_dir" / f"{SENTINEL_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path(__file__).with_name({SENTINEL_FILE!r}).touch()\n"
        "class Evil(dict):\n    pass\nVar = Module = Evil\n"
    )

    (d / "cases.json").write_text(json.dumps([dataclasses.asdict(c) for c in b.cases], indent=1))
    return b.cases


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_cases(directory: str, memory_bytes: int) -> None:
    """Read every case of a corpus directory, printing one JSON line per call (run in a child).

    After the imports and a warm-up load (which starts JAX's CPU backend and its threads),
    the address-space limit is set to what is mapped now plus `memory_bytes`: any case that
    tries to map more than that gets a MemoryError, which counts as a failure.

    Each call's cost is the CPU time of this process (`time.process_time`, every thread)
    spent in it: unlike wall-clock time it does not grow when other processes load the
    machine. The frameworks and ckptschema's adapters are imported first, so a case that
    makes the reader import an adapter is not charged for the import.
    """
    import resource
    import time

    sys.path.insert(0, os.path.join(directory, "sentinel_dir"))
    for framework in ("flax.nnx", "haiku", "objax"):  # imported before timing: see above
        if importlib.util.find_spec(framework.partition(".")[0]) is not None:  # the core env has none
            importlib.import_module(framework)

    import ckptschema

    for adapter in ("flax", "haiku", "objax"):
        if importlib.util.find_spec(adapter) is not None:
            importlib.import_module(f"ckptschema.{adapter}")

    cases = [Case(**c) for c in json.loads(Path(directory, "cases.json").read_text())]
    template = valid_tree()
    ckptschema.loads(valid_bytes(), template=template, verify=True)  # warm-up: backend, threads, caches
    ckptschema.loads(valid_bytes(), verify=True)
    limit = _vm_size() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    calls: dict[str, Callable[[str], Any]] = {
        "load": lambda p: ckptschema.load(p, verify=True),
        "load_noverify": lambda p: ckptschema.load(p),
        "load_template": lambda p: ckptschema.load(p, template=template, verify=True),
        "read_manifest": ckptschema.read_manifest,
        "validate": lambda p: _validate_raising(ckptschema, p),
    }
    print(json.dumps({"limit": limit, "extra": memory_bytes}), flush=True)
    for case in cases:
        for call in case.calls:
            print(json.dumps({"start": case.name, "call": call}), flush=True)
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                calls[call](case.path)
                error: BaseException | None = None
            except BaseException as e:
                error = e
            cpu_seconds = time.process_time() - cpu0
            seconds = time.perf_counter() - t0
            print(
                json.dumps(
                    {
                        "case": case.name,
                        "call": call,
                        "seconds": seconds,
                        "cpu_seconds": cpu_seconds,
                        "expected": case.error,
                        "raised": None if error is None else f"{type(error).__module__}.{type(error).__qualname__}",
                        "ok": error is not None
                        and isinstance(error, getattr(ckptschema, case.error))
                        and (case.match is None or case.match in str(error)),
                        "message": None if error is None else str(error)[:300],
                    }
                ),
                flush=True,
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sentinel = os.path.exists(os.path.join(directory, "sentinel_dir", SENTINEL_FILE))
    print(
        json.dumps(
            {
                "done": len(cases),
                "max_rss": rss,
                "sentinel_imported": sentinel,
                "sentinel_in_modules": SENTINEL_MODULE in sys.modules,
            }
        ),
        flush=True,
    )


def _validate_raising(ckptschema: Any, path: str) -> None:
    """`validate(deep=True)` reports checksum problems instead of raising: raise them here."""
    report = ckptschema.validate(path, deep=True)
    if any(i.kind == "checksum" for i in report.issues):
        raise ckptschema.IntegrityError(str(report))
    if not report.ok:
        raise ckptschema.FormatError(str(report))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--run":
        run_cases(argv[1], int(argv[2]))
        return 0
    usage = "usage: python tests/make_corpus.py OUT_DIR  |  --run OUT_DIR MEMORY_BYTES"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    cases = build_corpus(argv[0])
    print(f"{len(cases)} cases written to {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
