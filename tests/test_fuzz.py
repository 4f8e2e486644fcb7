"""Byte-mutation fuzz: mutated valid checkpoints give a `CkptSchemaError` or a result, nothing else.

Each input is a valid file (one of `SEEDS`) with one to three mutations: bits flipped, bytes
overwritten, inserted, deleted or cut off (in the header, with its length then mostly kept
right, in the data, or anywhere), the 8-byte header length changed, JSON tokens of the header
or of the manifest inside it spliced (replaced by another token of the same document, a
hostile one, or nothing), or one value of either document replaced (by another of its
values or a hostile one), removed or added. Every input goes through `loads` (without and
with a template, with ``verify=True``), `read_manifest` of a file and `validate` (deep, and
against the template). Any other exception (a raw `ValueError`, `TypeError`, `KeyError`,
`RecursionError`, `MemoryError`, ...) fails the test.

The 'ci' profile runs 3,000 inputs, 'dev' 200; ``CKPTSCHEMA_FUZZ_EXAMPLES`` sets another count
for a longer local run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptschema
from ckptschema._dtypes import DTYPES

EXAMPLES = int(
    os.environ.get("CKPTSCHEMA_FUZZ_EXAMPLES") or (3000 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 200)
)

Point = collections.namedtuple("Point", "x y")


class Seed(NamedTuple):
    name: str
    data: bytes
    template: Any


def _every_dtype() -> dict[str, np.ndarray]:
    tree = {}
    for i, (name, dtype) in enumerate(sorted(DTYPES.items())):
        raw = np.arange(3 * dtype.numpy.itemsize, dtype=np.uint8) % 2  # 0/1 bytes are values of every dtype
        tree[name] = raw.view(dtype.numpy).reshape(3) if i % 2 else raw.view(dtype.numpy)[:1].reshape(())
    return tree


def _plain(tensors: dict[str, np.ndarray]) -> bytes:
    """A plain safetensors file (no manifest), as other tools write them."""
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    offset, blobs = 0, []
    for key, array in tensors.items():
        blob = array.tobytes()
        header[key] = {"dtype": {"float32": "F32", "int8": "I8"}[array.dtype.name], "shape": list(array.shape)}
        header[key]["data_offsets"] = [offset, offset + len(blob)]
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _seeds() -> list[Seed]:
    nested = {
        "params": {"Dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float16)}},
        "layers": [np.zeros((0, 4), np.int8), (np.int32(7), None), Point(np.ones(2, np.uint8), 2.5)],
        "opt": Point(x=[], y={}),
        "step": 3,
        "name": "run-é",
        "flag": True,
        "big": 2**80,
        "nan": float("-nan"),
    }
    int_keys = {0: np.ones(2, np.float32), 7: {1: np.zeros(1, np.int64), 2: "x"}, 100: [None, ()]}
    ordered = collections.OrderedDict(b=np.ones(1, np.float32), a=np.zeros(2, np.bool_))
    keys = {"key": jax.random.key(0), "keys": jax.random.split(jax.random.key(1), 2)}
    dtypes = _every_dtype()
    plain = {"a.b": np.arange(4, dtype=np.float32), "a.c": np.ones(2, np.int8)}
    seeds = [
        Seed("nested", ckptschema.dumps(nested, metadata={"note": "n"}), nested),
        Seed("int_keys", ckptschema.dumps(int_keys, separator="/", checksum=None), int_keys),
        Seed("ordered_dict", ckptschema.dumps(ordered), ordered),
        Seed("prng_keys", ckptschema.dumps(keys), keys),
        Seed("every_dtype", ckptschema.dumps(dtypes), dtypes),
        Seed("root_leaf", ckptschema.dumps(np.arange(5, dtype=np.int16)), np.arange(5, dtype=np.int16)),
        Seed("scalars_only", ckptschema.dumps([1, -0.0, "s", None, False]), [1, -0.0, "s", None, False]),
        Seed("plain", _plain(plain), {"a": {"b": plain["a.b"], "c": plain["a.c"]}}),
    ]
    for seed in seeds:  # the seeds themselves are valid
        ckptschema.loads(seed.data, template=seed.template, verify=True)
    return seeds


SEEDS = _seeds()

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null|[\[\]{}:,]')
_HOSTILE = [
    *("0", "-1", "1", "2", "3", "7", "255", "65536", "4294967296", "18446744073709551616", "1" * 5000),
    *("1e400", "-0", "0.5", "NaN", "Infinity", "null", "true", "false", '""', '"x"', '"\\ud800"'),
    *("[]", "{}", "[0]", "[-1]", "[4611686018427387904,4611686018427387904]", '{"a":1}', "[" * 300, "]", "}"),
    *('"float32"', '"bfloat16"', '"int4"', '"float6_e2m3fn"', '"float8_e4m3fn"', '"complex128"', '"bool"'),
    *('"F32"', '"U8"', '"BOOL"', '"I4"', '"dict"', '"list"', '"tuple"', '"namedtuple"', '"node"', '"none"'),
    *('"tensor"', '"scalar"', '"wrapper"', '"jax.random.key"', '"collections.OrderedDict"', '"objax.TrainVar"'),
    *('"flax.core.frozen_dict.FrozenDict"', '"flax.nnx.Param"', '"threefry2x32"', '"rbg"', '"value"', '"impl"'),
    *('"__metadata__"', '"ckptschema"', '"digest"', '"data_offsets"', '"sha256"', '"int"', '"float"', '"str"'),
]

Mutation = Callable[[st.DrawFn, bytes], bytes]

#: JSON values put where others were: numbers at and past every bound, wrong types, names.
_VALUES: list[Any] = [
    *(0, -1, 1, 2, 3, 255, 2**31, 2**62, 2**63, 2**64, -(2**63), 1.5, -0.0, float("nan"), float("inf")),
    *(None, True, False, "", "x", "\ud800", "\x00", [], {}, [0], [-1], [2**62, 2**62], [0] * 300, {"a": 1}),
    *("float32", "bfloat16", "int4", "float6_e2m3fn", "float8_e4m3fn", "complex128", "bool", "uint2"),
    *("F32", "U8", "BOOL", "I4", "dict", "list", "tuple", "namedtuple", "node", "none", "tensor", "scalar"),
    *("wrapper", "jax.random.key", "collections.OrderedDict", "objax.TrainVar", "objax.VarCollection"),
    *("flax.core.frozen_dict.FrozenDict", "flax.nnx.Param", "flax.nnx.State", "threefry2x32", "rbg", "sha256"),
    *("int", "float", "str", "bool", "a" * 300, {"kind": "tensor"}, {"kind": "none"}, {"kind": "dict"}),
    {"kind": "scalar", "type": "int", "value": 1},
    {"kind": "wrapper", "type": "jax.random.key", "metadata": {"impl": "rbg"}, "child": {"kind": "none"}},
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
]
_NAMES = ["kind", "type", "keys", "children", "child", "fields", "metadata", "value", "key", "dtype", "shape"]
_NAMES += ["digest", "impl", "x", "", "__metadata__", "data_offsets", "version", "skeleton", "separator"]


_TYPES = ["jax.random.key", "collections.OrderedDict", "objax.TrainVar", "objax.StateVar", "objax.VarCollection"]
_TYPES += ["flax.core.frozen_dict.FrozenDict", "flax.nnx.Param", "flax.nnx.State", "flax.nnx.Variable", "x.Y"]
_TYPES += ["int", "float", "str", "bool", "complex", None, 0, ""]
#: Values drawn for a field of that name: the near misses that reach the deeper checks.
_BY_NAME = {
    "kind": st.sampled_from(["dict", "list", "tuple", "namedtuple", "node", "none", "tensor", "scalar", "wrapper"]),
    "type": st.sampled_from(_TYPES),
    "dtype": st.sampled_from([*sorted(DTYPES), "F32", "U8", "I4", "BOOL", "F8_E4M3", "C64", "object", "float"]),
    "shape": st.sampled_from([[], [0], [1], [-1], [2**62], [0, 2**62, 2**62], [2**31] * 4, [1] * 300, [True], [1.0]]),
    "impl": st.sampled_from(["threefry2x32", "rbg", "unsafe_rbg", "nope", "", 0, None, ["threefry2x32"]]),
    "metadata": st.sampled_from([{}, {"impl": "rbg"}, {"impl": 1}, {"value": 1}, {"a": [1]}, [], None, "x"]),
    "data_offsets": st.sampled_from([[0, 0], [0, 1], [1, 0], [0, 2**64], [-1, 2], [0], [0, 1, 2], [0.0, 4]]),
    "value": st.sampled_from([0, -1, 2**64, 1.5, "x", True, None, [], {}, "1" * 5000]),
}
_VALUE = st.sampled_from(_VALUES)
_NAME = st.sampled_from(_NAMES)
_HOSTILE_TOKEN = st.sampled_from(_HOSTILE)


def _pick(draw: st.DrawFn, items: list[Any]) -> Any:
    """One of `items`; drawn by index, since a fresh `sampled_from` per draw costs more than the test."""
    return items[draw(st.integers(0, len(items) - 1))]


def _split(data: bytes) -> tuple[int, bytes, bytes] | None:
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    return (n, data[8 : 8 + n], data[8 + n :]) if 8 + n <= len(data) else None


def _join(header: bytes, rest: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + rest


def _region(draw: st.DrawFn, data: bytes, extra: int = 0) -> tuple[int, int, bool]:
    """A byte range to mutate in: the header (its length then kept right, mostly), the data, or all."""
    parts = _split(data)
    where = ("header", "data", "anywhere")[draw(st.integers(0, 2))] if parts is not None else "anywhere"
    if where == "header" and parts is not None and parts[0] > 0:
        return 8, 8 + parts[0] - 1 + extra, draw(st.integers(0, 3)) > 0
    if where == "data" and parts is not None and 8 + parts[0] < len(data):
        return 8 + parts[0], len(data) - 1 + extra, False
    return 0, len(data) - 1 + extra, False


def _bytes_mutation(change: Callable[[st.DrawFn, bytes, int], bytes], extra: int = 0) -> Mutation:
    """A mutation at one position of a region; in the header, the header length is fixed after it."""

    def mutate(draw: st.DrawFn, data: bytes) -> bytes:
        low, high, fix = _region(draw, data, extra)
        at = draw(st.integers(low, max(low, high)))
        parts = _split(data)
        if not fix or parts is None:
            return change(draw, data, at)
        n, _, rest = parts
        return _join(change(draw, data[: 8 + n], at)[8:], rest)

    return mutate


def _flip(draw: st.DrawFn, data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]


def _overwrite(draw: st.DrawFn, data: bytes, at: int) -> bytes:
    new = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + new + data[at + len(new) :]


def _insert(draw: st.DrawFn, data: bytes, at: int) -> bytes:
    return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]


def _delete(draw: st.DrawFn, data: bytes, at: int) -> bytes:
    return data[:at] + data[at + draw(st.integers(1, 32)) :]


def _truncate(draw: st.DrawFn, data: bytes) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def _length(draw: st.DrawFn, data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    new = draw(
        st.integers(max(0, n - 16), n + 16)
        | st.sampled_from([0, 1, 7, len(data), len(data) - 8, 2**31, 2**63, 2**64 - 1])
        | st.integers(0, 2**64 - 1)
    )
    return struct.pack("<Q", new) + data[8:]


def _splice(draw: st.DrawFn, text: str) -> str:
    """`text` with one JSON token replaced: by another of its tokens, a hostile one, or nothing."""
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return text
    token, other = _pick(draw, tokens), _pick(draw, tokens).group(0)
    choice = draw(st.integers(0, 4))
    new = draw(_HOSTILE_TOKEN) if choice == 4 else ["", other, other + "," + other, token.group(0) * 2][choice]
    return text[: token.start()] + new + text[token.end() :]


def _edit(draw: st.DrawFn, document: Any) -> Any:
    """A JSON document (changed in place) with one value replaced, removed, copied or added."""
    slots: list[tuple[Any, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            slots.append((node, key))
            stack.append(child)
    if not slots:
        return draw(_VALUE)
    parent, key = _pick(draw, slots)
    other_parent, other_key = _pick(draw, slots)
    source = draw(st.integers(0, 2))
    if source == 0 and isinstance(parent, dict) and key in _BY_NAME:
        value = draw(_BY_NAME[key])
    else:
        value = json.loads(json.dumps(other_parent[other_key])) if source == 1 else draw(_VALUE)
    action = draw(st.integers(0, 3))
    if action < 2:
        parent[key] = value
    elif action == 2:
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(_NAME)] = value
    else:
        parent.insert(key, value)
    return document


def _header_parts(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    parts = _split(data)
    if parts is None:
        return None
    try:
        document = json.loads(parts[1])
    except ValueError:
        return None
    return (document, parts[2]) if isinstance(document, dict) else None


def _encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _header_splice(draw: st.DrawFn, data: bytes) -> bytes:
    parts = _split(data)
    if parts is None:
        return data
    _, header, rest = parts
    text = _splice(draw, header.decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
    return _join(text, rest) if draw(st.booleans()) or len(text) == len(header) else data[:8] + text + rest


def _header_edit(draw: st.DrawFn, data: bytes) -> bytes:
    parts = _header_parts(data)
    if parts is None:
        return _header_splice(draw, data)
    document, rest = parts
    return _join(_encode(_edit(draw, document)), rest)


def _manifest_text(draw: st.DrawFn, data: bytes, change: Callable[[st.DrawFn, str], str]) -> bytes:
    parts = _header_parts(data)
    metadata = parts[0].get("__metadata__") if parts is not None else None
    if parts is None or not isinstance(metadata, dict) or not isinstance(metadata.get("ckptschema"), str):
        return _header_edit(draw, data)
    document, rest = parts
    metadata["ckptschema"] = change(draw, metadata["ckptschema"])
    return _join(_encode(document), rest)


def _manifest_splice(draw: st.DrawFn, data: bytes) -> bytes:
    return _manifest_text(draw, data, _splice)


def _manifest_edit(draw: st.DrawFn, data: bytes) -> bytes:
    def edit(draw: st.DrawFn, text: str) -> str:
        try:
            return json.dumps(_edit(draw, json.loads(text)), separators=(",", ":"))
        except ValueError:
            return _splice(draw, text)

    return _manifest_text(draw, data, edit)


#: Weighted by how deep an input gets: whole-document edits reach the manifest's and the
#: tree's checks; most raw byte changes stop at the header's length, UTF-8 or JSON checks.
MUTATIONS: list[Mutation] = [
    _bytes_mutation(_flip),
    _bytes_mutation(_overwrite),
    _bytes_mutation(_insert, extra=1),
    _bytes_mutation(_delete),
    _truncate,
    _length,
    _header_splice,
    _header_edit,
    _header_edit,
    _manifest_splice,
    *[_manifest_edit] * 6,
]


_SEED = st.sampled_from(SEEDS)
_MUTATION = st.sampled_from(MUTATIONS)


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[Seed, bytes]:
    seed = draw(_SEED)
    data = seed.data
    for _ in range(draw(st.integers(1, 3))):
        if len(data) >= 8:
            data = draw(_MUTATION)(draw, data)
    return seed, data


def _calls(seed: Seed, data: bytes, path: str) -> list[Callable[[], Any]]:
    return [
        lambda: ckptschema.loads(data),
        lambda: ckptschema.loads(data, template=seed.template),
        lambda: ckptschema.loads(data, verify=True),
        lambda: ckptschema.read_manifest(path),
        lambda: ckptschema.validate(data, deep=True),
        lambda: ckptschema.validate(data, seed.template),
    ]


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.safetensors"
    path.touch()
    return str(path)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(mutated_files())
def test_mutated_files_give_library_errors_only(fuzz_file, case):
    seed, data = case
    with open(fuzz_file, "r+b") as f:  # rewritten in place: truncating on open costs ms on some disks
        f.write(data)
        f.truncate()
    for call in _calls(seed, data, fuzz_file):
        with contextlib.suppress(ckptschema.CkptSchemaError):  # anything else fails the test
            call()
