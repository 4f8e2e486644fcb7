"""The main job on a small Flax model: save, inspect the manifest, validate, load strictly.

Run it with ``python3.11 dev.py demo`` (which installs everything first), or directly with
``python examples/demo.py`` in an environment that has ``ckptschema[flax]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import ckptschema
import ckptschema.flax
from ckptschema.cli import main as cli


class MLP(nn.Module):
    """A small classifier: Dense -> BatchNorm -> relu -> Dense."""

    hidden: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.hidden)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(10)(nn.relu(x))


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    model = MLP()
    x = jnp.ones((4, 16))
    variables = model.init(jax.random.key(0), x)
    workdir = Path(tempfile.mkdtemp(prefix="ckptschema-demo-"))
    path = workdir / "mlp.safetensors"

    step(f"save -> {path}")
    manifest = ckptschema.flax.save(path, variables, metadata={"model": "MLP(hidden=32)"})
    print(
        f"{len(manifest.tensors)} tensors, {manifest.num_params} parameters, {manifest.nbytes} bytes, "
        f"framework {manifest.framework!r}"
    )

    step("inspect (ckptschema inspect)")
    cli(["inspect", str(path)])

    step("schema for review (ckptschema schema -o mlp.schema.json)")
    schema = workdir / "mlp.schema.json"
    cli(["schema", str(path), "-o", str(schema)])
    print(f"wrote {schema} ({schema.stat().st_size} bytes)")

    step("validate against the reviewed schema, re-hashing every tensor")
    code = cli(["validate", str(path), "--schema", str(schema), "--deep"])
    assert code == 0

    step("strict load with a template from jax.eval_shape")
    template = jax.eval_shape(model.init, jax.random.key(0), x)
    restored = ckptschema.load(path, template=template)
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), restored, variables))
    outputs_equal = np.array_equal(model.apply(restored, x), model.apply(variables, x))
    print(f"every tensor bit-identical: {same}; model outputs identical: {outputs_equal}")

    step("a model of another shape is refused, every problem listed by path")
    wrong = jax.eval_shape(MLP(hidden=64).init, jax.random.key(0), x)
    try:
        ckptschema.load(path, template=wrong)
    except ckptschema.ValidationError as e:
        print(e)
    return 0 if same and outputs_equal else 1


if __name__ == "__main__":
    sys.exit(main())
