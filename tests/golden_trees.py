"""The trees of the golden files: format version 1 as this release writes it, pinned forever.

Every tree is built from fixed values (``np.arange``, explicit numbers, raw bit patterns
viewed as the dtype), never from a random generator or a model's initialiser, so the same
tree comes out of every version of numpy, JAX and the frameworks. Each `Golden` names its
tree, what it covers, and how it is saved; ``tests/make_golden.py`` writes the files and
``tests/test_golden.py`` checks them.

Framework trees import their framework only when built, so this module imports in an
environment without any framework (the core tox env); `Golden.available` says whether the
framework of a tree is installed.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import importlib.util
import os
import struct
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckptschema._dtypes import ALL_DTYPE_NAMES, lookup

#: The directory of the committed golden files of format version 1.
GOLDEN_DIR = Path(__file__).parent / "data" / "golden" / "v1"

#: A module-level `collections.namedtuple`: loads without a template give this very class back.
Point = collections.namedtuple("Point", ["x", "y"])
#: A namedtuple without fields.
Nothing = collections.namedtuple("Nothing", [])


class Pair(typing.NamedTuple):
    """A module-level `typing.NamedTuple` with a tensor and a scalar field."""

    first: Any
    second: Any


def _float_from_bits(bits: int) -> float:
    """The float64 whose IEEE 754 bits are ``bits`` (NaN sign and payload kept)."""
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _f32(*shape: int, start: float = 0.0) -> np.ndarray:
    """A float32 array of ``shape`` holding ``start, start + 0.25, ...``: exact in binary."""
    size = int(np.prod(shape, dtype=np.int64))
    return (np.arange(size, dtype=np.float32) * np.float32(0.25) + np.float32(start)).reshape(shape)


def _tensors() -> dict[str, Any]:
    """Tensor leaves: 0-d, 1-d, 2-d and 3-d."""
    return {
        "scalar": np.array(1.5, np.float32),
        "vector": _f32(5),
        "matrix": _f32(2, 3, start=-1.0),
        "cube": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
    }


def _scalars() -> dict[str, Any]:
    """Python scalar leaves of every type with their edge values."""
    return {
        "true": True,
        "false": False,
        "zero": 0,
        "minus_one": -1,
        "two_to_63": 2**63,
        "minus_two_to_70": -(2**70),
        "six_hundred_digits": 10**599 + 123456789,
        "float_zero": 0.0,
        "float_minus_zero": -0.0,
        "tenth": 0.1,
        "tiny": 1e-300,
        "smallest_subnormal": 5e-324,
        "inf": float("inf"),
        "minus_inf": float("-inf"),
        "nan": float("nan"),
        "negative_nan": _float_from_bits(0xFFF8000000000000),
        "payload_nan": _float_from_bits(0x7FF0000000000001),
        "quiet_payload_nan": _float_from_bits(0x7FF80000DEADBEEF),
        "empty_str": "",
        "unicode_str": "héllo.wörld/日本語 ✓ \u00a0tab\tnewline\n",
    }


def _nones() -> dict[str, Any]:
    """None at the top of a dict, in a list and in a tuple."""
    return {"none": None, "in_list": [None, _f32(2)], "in_tuple": (None,)}


def _sequences() -> dict[str, Any]:
    """Lists and tuples, nested, mixing tensors, scalars and None."""
    return {
        "list": [_f32(2), 7, [_f32(1), "x"], None],
        "tuple": (_f32(3), (np.arange(2, dtype=np.int8),), 0.5),
    }


def _namedtuples() -> dict[str, Any]:
    """A `collections.namedtuple`, a `typing.NamedTuple`, nested and empty."""
    return {
        "point": Point(x=_f32(2), y=3),
        "pair": Pair(first=Point(x=1.0, y=None), second=np.arange(3, dtype=np.uint16)),
        "nothing": Nothing(),
    }


def _str_dicts() -> dict[str, Any]:
    """Dicts with str keys in insertion order (not sorted), odd characters included."""
    return {
        "zeta": _f32(1),
        "alpha": {"kernel": _f32(2, 2), "bias": _f32(2)},
        "with/slash": 1,
        "with~tilde": 2,
        "[bracket]": 3,
        "'quoted\"": 4,
        "ünïcödé": 5,
        "with space": 6,
    }


def _int_dicts() -> dict[str, Any]:
    """Dicts with int keys (negative and unsorted), next to a str-keyed one."""
    return {"by_id": {2: _f32(2), 0: _f32(1), -1: "minus one", 10: None}, "str": {"2": 2}}


def _ordered_dicts() -> dict[str, Any]:
    """`collections.OrderedDict`, nested, in non-sorted order."""
    inner = collections.OrderedDict([("b", _f32(1)), ("a", 2)])
    return {"od": collections.OrderedDict([("z", inner), ("y", collections.OrderedDict())])}


def _empties() -> dict[str, Any]:
    """Every empty container."""
    return {
        "dict": {},
        "list": [],
        "tuple": (),
        "ordered": collections.OrderedDict(),
        "nested": [{}, ((),), [[]]],
        "nothing": Nothing(),
    }


def _prng_keys() -> dict[str, Any]:
    """Typed PRNG keys of threefry2x32 and rbg, from fixed key data (no key derivation)."""
    import jax

    def key(impl: str, *shape: int) -> Any:
        data = (np.arange(int(np.prod(shape)), dtype=np.uint32) * np.uint32(2654435761)).reshape(shape)
        return jax.random.wrap_key_data(data, impl=impl)

    return {
        "threefry": key("threefry2x32", 2),
        "threefry_split": key("threefry2x32", 3, 2),
        "rbg": key("rbg", 4),
        "rbg_split": key("rbg", 2, 4),
    }


def _bytes_as(name: str, count: int, step: int, offset: int) -> np.ndarray:
    """``count`` elements of dtype ``name`` from the byte pattern ``offset + i * step`` (mod 256)."""
    dt = lookup(name)
    raw = (np.arange(count * dt.numpy.itemsize, dtype=np.int64) * step + offset) % 256
    if dt.numpy == np.bool_:
        raw %= 2
    elif dt.bits is not None:
        raw %= 1 << dt.bits
    return raw.astype(np.uint8).view(dt.numpy)


def _dtype_tree(name: str) -> Callable[[], dict[str, Any]]:
    """The arrays of one dtype: 0-d, 1-d holding every byte value, 2-d, and zero-size."""

    def build() -> dict[str, Any]:
        every = 256 // lookup(name).numpy.itemsize if lookup(name).numpy.itemsize < 4 else 16
        return {
            "zero_d": _bytes_as(name, 1, 1, 0x3C).reshape(()),
            "one_d": _bytes_as(name, every, 1, 0),
            "two_d": _bytes_as(name, 6, 37, 11).reshape(2, 3),
            "zero_size": _bytes_as(name, 0, 1, 0).reshape(0, 3),
        }

    build.__doc__ = f"Arrays of dtype {name}: 0-d, 1-d, 2-d and zero-size."
    return build


def _with_options() -> dict[str, Any]:
    """A tree for a custom separator and user metadata: keys holding the default separator."""
    return {"a": {"b.c": _f32(2), "d": [np.arange(3, dtype=np.int16)]}, "e": 1}


def _sharded() -> dict[str, Any]:
    """A tree big enough to go into several shards of 300 bytes."""
    return {
        "embed": _f32(8, 8),
        "layers": [{"w": _f32(6, 8, start=float(i)), "b": _f32(8, start=-float(i))} for i in range(3)],
        "head": np.arange(40, dtype=np.int16).reshape(5, 8),
        "step": 12,
    }


def _linen_variables() -> dict[str, Any]:
    """Linen variables of a Dense + BatchNorm model, as a plain dict."""
    return {
        "params": {
            "Dense_0": {"kernel": _f32(3, 4, start=-1.5), "bias": _f32(4, start=0.5)},
            "BatchNorm_0": {"scale": _f32(4, start=1.0), "bias": _f32(4)},
        },
        "batch_stats": {"BatchNorm_0": {"mean": _f32(4, start=-0.5), "var": _f32(4, start=1.0)}},
    }


def _linen_frozen() -> Any:
    """The linen variables as a flax `FrozenDict`."""
    from flax.core import freeze

    return freeze(_linen_variables())


def _nnx_linear_model() -> Any:
    """An ``nnx.Linear(3, 4)`` whose kernel and bias are set to fixed values."""
    from flax import nnx

    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    model.kernel.set_value(_f32(3, 4, start=-1.0))
    model.bias.set_value(_f32(4, start=0.25))
    return model


def _nnx_state() -> Any:
    """``nnx.state`` of the fixed ``nnx.Linear``."""
    from flax import nnx

    return nnx.state(_nnx_linear_model())


def _nnx_optimizer_state() -> Any:
    """``nnx.state`` of an ``nnx.Optimizer`` (adam) over the fixed ``nnx.Linear``, before any step."""
    import optax
    from flax import nnx

    return nnx.state(nnx.Optimizer(_nnx_linear_model(), optax.adam(1e-3), wrt=nnx.Param))


def _haiku_params() -> dict[str, Any]:
    """haiku params of a two-layer MLP: module names with ``/~/``."""
    return {
        "mlp/~/linear_0": {"w": _f32(3, 4), "b": _f32(4)},
        "mlp/~/linear_1": {"w": _f32(4, 2, start=1.0), "b": _f32(2)},
    }


def _objax_vars() -> Any:
    """The `VarCollection` of ``Sequential([Linear(3, 4), BatchNorm0D(4)])``, set to fixed values."""
    import objax

    model = objax.nn.Sequential([objax.nn.Linear(3, 4), objax.nn.BatchNorm0D(4)])
    variables = model.vars()
    for i, name in enumerate(sorted(variables.keys())):
        var = variables[name]
        var.assign(_f32(*var.value.shape, start=float(i)), check=False)
    return variables


def _optax_adam_state() -> Any:
    """``optax.adam(1e-3).init(params)`` with every leaf replaced by a fixed value."""
    import jax
    import optax

    params = {"w": _f32(3, 2), "b": _f32(2)}
    state = optax.adam(1e-3).init(params)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    fixed = [
        np.asarray(7, leaf.dtype) if leaf.ndim == 0 else _f32(*leaf.shape, start=float(i))
        for i, leaf in enumerate(leaves)
    ]
    return {"params": params, "opt_state": jax.tree_util.tree_unflatten(treedef, fixed)}


def _equinox_linear() -> Any:
    """An ``eqx.nn.Linear(3, 4)`` whose weight and bias are set to fixed values."""
    import equinox as eqx
    import jax

    model = eqx.nn.Linear(3, 4, key=jax.random.key(0))
    return eqx.tree_at(lambda m: (m.weight, m.bias), model, (_f32(4, 3, start=-2.0), _f32(4)))


@dataclasses.dataclass(frozen=True)
class Golden:
    """One golden file: its tree, what it pins, and how it is saved.

    Attributes:
        name: the file name stem (``<name>.safetensors``, or the directory ``<name>/`` when sharded).
        covers: one line for the README: what the file pins.
        build: returns the tree, the same every time.
        saver: the module whose ``save`` writes it: ``ckptschema`` or a framework adapter.
        save_kwargs: the options given to ``save``.
        needs: the modules the tree needs (frameworks); empty for core trees.
        needs_template: True when the tree holds a node that only a template rebuilds.
    """

    name: str
    covers: str
    build: Callable[[], Any]
    saver: str = "ckptschema"
    save_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()
    needs_template: bool = False

    @property
    def sharded(self) -> bool:
        """Whether it is saved as a sharded checkpoint (a directory)."""
        return "max_shard_size" in self.save_kwargs

    @property
    def available(self) -> bool:
        """Whether every module the tree needs is installed."""
        return all(importlib.util.find_spec(m) is not None for m in self.needs)

    def path(self, root: str | os.PathLike[str] = GOLDEN_DIR) -> Path:
        """Where the file (or sharded directory) lives under ``root``.

        Example:
            >>> by_name["scalars"].path("/tmp/g").as_posix()
            '/tmp/g/scalars.safetensors'
        """
        return Path(root) / (self.name if self.sharded else f"{self.name}.safetensors")

    def save(self, root: str | os.PathLike[str]) -> Path:
        """Save the tree under ``root`` as this release writes it; returns the path written.

        Example:
            >>> by_name["tensors"].save(tmp_path).name
            'tensors.safetensors'
        """
        saver = importlib.import_module(self.saver)
        path = self.path(root)
        saver.save(path, self.build(), **self.save_kwargs)
        return path


_OPTIONS = {"separator": "/", "metadata": {"author": "golden", "note": "ünï / ✓"}}
_SHARDS = {"max_shard_size": 300}
_CORE = (
    Golden("tensors", "tensor leaves: float32 and int32, 0-d to 3-d", _tensors),
    Golden(
        "scalars", "Python scalars: bool, edge ints (2**63, 600 digits), floats (-0.0, 5e-324, NaN bits), str", _scalars
    ),
    Golden("nones", "None in a dict, a list and a tuple", _nones),
    Golden("sequences", "nested lists and tuples", _sequences),
    Golden("namedtuples", "collections.namedtuple, typing.NamedTuple, an empty namedtuple", _namedtuples),
    Golden("str_dicts", "str keys in insertion order, with /, ~, [, quotes, Unicode, spaces", _str_dicts),
    Golden("int_dicts", "int keys, negative and unsorted", _int_dicts),
    Golden("ordered_dicts", "collections.OrderedDict, nested and empty", _ordered_dicts),
    Golden("empties", "every empty container", _empties),
    Golden("prng_keys", "typed PRNG keys: threefry2x32 and rbg, single and split", _prng_keys),
    *(
        Golden(f"dtype_{name}", f"dtype {name}: 0-d, 1-d, 2-d and zero-size arrays", _dtype_tree(name))
        for name in ALL_DTYPE_NAMES
    ),
    Golden("options", "separator='/' and user metadata", _with_options, save_kwargs=_OPTIONS),
    Golden("no_checksum", "checksum=None: no digests", _tensors, save_kwargs={"checksum": None}),
    Golden("sharded", "a sharded checkpoint: index, 5 shards of at most 300 bytes", _sharded, save_kwargs=_SHARDS),
)

_FLAX = {"saver": "ckptschema.flax", "needs": ("flax",)}
_FRAMEWORKS = (
    Golden("flax_linen_dict", "flax linen variables, a plain dict (ckptschema.flax)", _linen_variables, **_FLAX),
    Golden("flax_linen_frozendict", "flax linen variables, a FrozenDict (ckptschema.flax)", _linen_frozen, **_FLAX),
    Golden("flax_nnx_state", "flax nnx State of an nnx.Linear (ckptschema.flax)", _nnx_state, **_FLAX),
    Golden("flax_nnx_optimizer", "flax nnx State of an nnx.Optimizer, adam", _nnx_optimizer_state, **_FLAX),
    Golden("haiku_params", "haiku params, /~/ in module names", _haiku_params, "ckptschema.haiku", needs=("haiku",)),
    Golden(
        "objax_vars", "objax VarCollection: TrainVars, StateVars", _objax_vars, "ckptschema.objax", needs=("objax",)
    ),
    Golden("optax_adam", "optax adam state (optax's namedtuples) and its params", _optax_adam_state, needs=("optax",)),
    Golden(
        "equinox_linear",
        "an equinox Module: a node only a template rebuilds",
        _equinox_linear,
        needs=("equinox",),
        needs_template=True,
    ),
)

#: Every golden file, core trees first.
GOLDEN: tuple[Golden, ...] = _CORE + _FRAMEWORKS
#: The golden files by name.
by_name: dict[str, Golden] = {g.name: g for g in GOLDEN}
