"""optax states and equinox Modules through the generic path, on real small models."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ckptschema

pytestmark = pytest.mark.framework

X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)
Y = jnp.linspace(0.0, 1.0, 10, dtype=jnp.float32).reshape(5, 2)

# ------------------------------------------------------------------------------- optax

TX = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(1e-4)),
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
)


def _params(width: int = 8) -> dict[str, Any]:
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "hidden": {"w": jax.random.normal(k1, (3, width)), "b": jnp.zeros(width)},
        "out": {"w": jax.random.normal(k2, (width, 2)), "b": jnp.zeros(2)},
    }


def _predict(params: dict[str, Any], x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


@jax.jit
def _step(params: dict[str, Any], opt_state: Any) -> tuple[dict[str, Any], Any, jax.Array]:
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((_predict(p, X) - Y) ** 2))(params)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _train(params: dict[str, Any], opt_state: Any, steps: int) -> tuple[dict[str, Any], Any, list[np.ndarray]]:
    losses = []
    for _ in range(steps):
        params, opt_state, loss = _step(params, opt_state)
        losses.append(np.asarray(loss))
    return params, opt_state, losses


def _checkpoint() -> dict[str, Any]:
    params, opt_state, _ = _train(_params(), TX.init(_params()), 3)
    return {"params": params, "opt_state": opt_state}


def _assert_resumes_identically(loaded: dict[str, Any], saved: dict[str, Any]) -> None:
    params, opt_state, losses = _train(saved["params"], saved["opt_state"], 3)
    resumed_params, resumed_state, resumed_losses = _train(loaded["params"], loaded["opt_state"], 3)
    np.testing.assert_array_equal(np.stack(resumed_losses), np.stack(losses))
    jax.tree.map(np.testing.assert_array_equal, resumed_params, params)
    # Leaf by leaf: without a template, an untouched EmptyState keeps its rebuilt namedtuple class.
    assert len(jax.tree.leaves(resumed_state)) == len(jax.tree.leaves(opt_state))
    for resumed, leaf in zip(jax.tree.leaves(resumed_state), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(resumed, leaf)


def test_optax_chain_state_with_template_keeps_its_classes_and_resumes(tmp_path):
    saved = _checkpoint()
    ckptschema.save(tmp_path / "opt.safetensors", saved)
    template = jax.eval_shape(lambda: {"params": _params(), "opt_state": TX.init(_params())})
    loaded = ckptschema.load(tmp_path / "opt.safetensors", template=template)
    assert jax.tree.structure(loaded) == jax.tree.structure(saved)
    assert type(loaded["opt_state"][1][0]) is optax.ScaleByAdamState
    _assert_resumes_identically(loaded, saved)


def test_optax_chain_state_without_template_rebuilds_namedtuples_and_resumes(tmp_path):
    saved = _checkpoint()
    ckptschema.save(tmp_path / "opt.safetensors", saved)
    loaded = ckptschema.load(tmp_path / "opt.safetensors")
    adam = loaded["opt_state"][1][0]
    assert type(adam).__name__ == "ScaleByAdamState" and adam._fields == ("count", "mu", "nu")
    np.testing.assert_array_equal(_predict(loaded["params"], X), _predict(saved["params"], X))
    _assert_resumes_identically(loaded, saved)


def test_optax_state_of_other_shape_fails_naming_path(tmp_path):
    ckptschema.save(tmp_path / "opt.safetensors", _checkpoint())
    template = jax.eval_shape(lambda: {"params": _params(16), "opt_state": TX.init(_params(16))})
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.load(tmp_path / "opt.safetensors", template=template)
    lines = str(info.value).splitlines()
    assert "    opt_state/1/0/mu/hidden/w: shape (3, 8) in file, (3, 16) in template" in lines
    assert "    opt_state/2/inner_state/0/trace/out/w: shape (8, 2) in file, (16, 2) in template" in lines


# ----------------------------------------------------------------------------- equinox


def _mlp(width: int = 8, seed: int = 0) -> eqx.nn.MLP:
    return eqx.nn.MLP(3, 2, width, depth=2, key=jax.random.key(seed))


def _is_abstract(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def test_equinox_mlp_round_trips_with_filtered_template(tmp_path):
    model = _mlp()
    params, _ = eqx.partition(model, eqx.is_array)
    ckptschema.save(tmp_path / "mlp.safetensors", params)
    fresh = _mlp(seed=1)
    template, static = eqx.partition(fresh, eqx.is_array)
    restored = eqx.combine(ckptschema.load(tmp_path / "mlp.safetensors", template=template), static)
    np.testing.assert_array_equal(jax.vmap(restored)(X), jax.vmap(model)(X))


def test_equinox_mlp_round_trips_with_abstract_template(tmp_path):
    model = _mlp()
    ckptschema.save(tmp_path / "mlp.safetensors", eqx.filter(model, eqx.is_array))
    template, static = eqx.partition(eqx.filter_eval_shape(_mlp), _is_abstract)
    restored = eqx.combine(ckptschema.load(tmp_path / "mlp.safetensors", template=template), static)
    assert type(restored) is eqx.nn.MLP
    np.testing.assert_array_equal(jax.vmap(restored)(X), jax.vmap(model)(X))


def test_equinox_module_without_template_says_to_pass_one(tmp_path):
    ckptschema.save(tmp_path / "mlp.safetensors", eqx.filter(_mlp(), eqx.is_array))
    with pytest.raises(
        ckptschema.CkptSchemaError,
        match=r"node of type equinox\.nn\._mlp\.MLP, which ckptschema only rebuilds through a template",
    ):
        ckptschema.load(tmp_path / "mlp.safetensors")


def test_equinox_model_of_other_shape_fails_naming_path(tmp_path):
    ckptschema.save(tmp_path / "mlp.safetensors", eqx.filter(_mlp(), eqx.is_array))
    template = eqx.filter(_mlp(width=16), eqx.is_array)
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.load(tmp_path / "mlp.safetensors", template=template)
    assert "    layers/0/weight: shape (8, 3) in file, (16, 3) in template" in str(info.value).splitlines()
    assert [i.path for i in info.value.issues] == [
        "layers/0/weight",
        "layers/0/bias",
        "layers/1/weight",
        "layers/1/bias",
        "layers/2/weight",
    ]
