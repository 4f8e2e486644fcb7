"""The benchmark trees: "big" (a transformer's parameters), "bf16" (the same in bfloat16), "many".

A workload is first a *spec* — a list of ``(path, shape, dtype)`` — so a fresh process can
build the abstract template (``jax.ShapeDtypeStruct`` leaves) without materialising data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]
Spec = list[tuple[Path, tuple[int, ...], Any]]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Transformer dimensions for "big"/"bf16", the leaves of "many" and of the read_manifest scaling files."""

    d_model: int
    d_mlp: int
    layers: int
    vocab: int
    positions: int
    many_leaves: int
    scaling_leaves: tuple[int, int, int]  # read_manifest scaling; the last two are compared for linearity


# 18 layers of d_model=768: 292 leaves, 536.9 MB in float32. The position embedding
# (320 x 768 float32) is the ~1 MB leaf used for the subtree= measurement.
FULL = Sizes(
    d_model=768,
    d_mlp=3072,
    layers=18,
    vocab=8192,
    positions=320,
    many_leaves=20_000,
    scaling_leaves=(1_000, 10_000, 100_000),
)
QUICK = Sizes(
    d_model=32, d_mlp=128, layers=2, vocab=64, positions=16, many_leaves=200, scaling_leaves=(100, 1_000, 2_000)
)

SUBTREE = "params.pos_embed"  # the ~1 MB subtree (one leaf) loaded by path


def transformer_spec(sizes: Sizes, dtype: Any) -> Spec:
    d, m = sizes.d_model, sizes.d_mlp
    spec: Spec = [
        (("params", "embed", "embedding"), (sizes.vocab, d), dtype),
        (("params", "pos_embed", "embedding"), (sizes.positions, d), dtype),
    ]
    for i in range(sizes.layers):
        layer = ("params", "layers", f"layer_{i}")
        for name in ("q", "k", "v", "o"):
            spec.append(((*layer, "attn", name, "kernel"), (d, d), dtype))
            spec.append(((*layer, "attn", name, "bias"), (d,), dtype))
        spec.append(((*layer, "mlp", "up", "kernel"), (d, m), dtype))
        spec.append(((*layer, "mlp", "up", "bias"), (m,), dtype))
        spec.append(((*layer, "mlp", "down", "kernel"), (m, d), dtype))
        spec.append(((*layer, "mlp", "down", "bias"), (d,), dtype))
        for ln in ("ln1", "ln2"):
            spec.append(((*layer, ln, "scale"), (d,), dtype))
            spec.append(((*layer, ln, "bias"), (d,), dtype))
    spec.append((("params", "final_ln", "scale"), (d,), dtype))
    spec.append((("params", "final_ln", "bias"), (d,), dtype))
    return spec


_MANY_SHAPES = [(4,), (8,), (2, 3), (16,), (3, 3), (1,)]


def many_spec(leaves: int) -> Spec:
    """`leaves` small float32 leaves nested 4 deep, fan-out 10 in the three inner levels.

    Leaf ``i`` sits at ``block_{i // 1000}/group_{i // 100 % 10}/unit_{i // 10 % 10}/w_{i % 10}``.
    """
    return [
        (
            (f"block_{i // 1000}", f"group_{i // 100 % 10}", f"unit_{i // 10 % 10}", f"w_{i % 10}"),
            _MANY_SHAPES[i % len(_MANY_SHAPES)],
            np.float32,
        )
        for i in range(leaves)
    ]


def spec_for(workload: str, quick: bool) -> Spec:
    sizes = QUICK if quick else FULL
    if workload == "big":
        return transformer_spec(sizes, np.float32)
    if workload == "bf16":
        return transformer_spec(sizes, jnp.bfloat16)
    if workload == "many":
        return many_spec(sizes.many_leaves)
    raise ValueError(f"unknown workload {workload!r}")


def payload_bytes(spec: Spec) -> int:
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for _, shape, dtype in spec)


def _nest(items: Iterator[tuple[Path, Any]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in items:
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return root


def build_tree(spec: Spec, seed: int = 0) -> dict[str, Any]:
    """Random data for every leaf, as `jax.Array`s (what a user saving a JAX model holds)."""
    rng = np.random.default_rng(seed)

    def leaf(shape: tuple[int, ...], dtype: Any) -> jax.Array:
        values = rng.standard_normal(shape, dtype=np.float32)
        return jax.device_put(values.astype(dtype))

    return _nest((path, leaf(shape, dtype)) for path, shape, dtype in spec)


def abstract_tree(spec: Spec) -> dict[str, Any]:
    """The template a user would get from ``jax.eval_shape(model.init, ...)``."""
    return _nest((path, jax.ShapeDtypeStruct(shape, np.dtype(dtype))) for path, shape, dtype in spec)


def numpy_tree(spec: Spec) -> dict[str, Any]:
    """A template of zero-filled `np.ndarray`s: ckptschema then loads numpy arrays."""
    return _nest((path, np.zeros(shape, dtype)) for path, shape, dtype in spec)


def subtree_template(spec: Spec) -> Any:
    """The template for `SUBTREE`, and its payload in bytes."""
    parts = tuple(SUBTREE.split("."))
    leaves = [(p[len(parts) :], shape, dtype) for p, shape, dtype in spec if p[: len(parts)] == parts]
    return abstract_tree(leaves), payload_bytes(leaves)


# ------------------------------------------------------------- the usual '.'-join flattening


def dot_flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(dot_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def dot_unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    return _nest((tuple(key.split(".")), value) for key, value in flat.items())


# ------------------------------------------------------------------------- verification


def mismatches(source: Any, loaded: Any) -> list[str]:
    """Paths where `loaded` differs from `source`: structure, dtype, shape or any bit."""
    want = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    problems = [f"missing {k}" for k in want.keys() - got.keys()]
    problems += [f"unexpected {k}" for k in got.keys() - want.keys()]
    for key in want.keys() & got.keys():
        a, b = np.asarray(want[key]), np.asarray(got[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: {b.dtype}{b.shape} != {a.dtype}{a.shape}")
        elif not np.array_equal(_raw(a), _raw(b)):
            problems.append(f"{key}: bytes differ")
    return sorted(problems)


def _raw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def leaf_kind(tree: Any) -> str:
    """ "jax", "numpy" or "mixed": what the leaves of a loaded tree are."""
    kinds = {
        "jax" if isinstance(x, jax.Array) else "numpy" if isinstance(x, np.ndarray) else type(x).__name__
        for x in jax.tree.leaves(tree)
    }
    return kinds.pop() if len(kinds) == 1 else "mixed"
