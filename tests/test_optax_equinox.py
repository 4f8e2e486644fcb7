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
    assert jax.tree.structure(resumed_state) == jax.tree.structure(opt_state)
    jax.tree.map(np.testing.assert_array_equal, resumed_state, opt_state)


def test_optax_chain_state_with_template_keeps_its_classes_and_resumes(tmp_path):
    saved = _checkpoint()
    ckptschema.save(tmp_path / "opt.safetensors", saved)
    template = jax.eval_shape(lambda: {"params": _params(), "opt_state": TX.init(_params())})
    loaded = ckptschema.load(tmp_path / "opt.safetensors", template=template)
    assert jax.tree.structure(loaded) == jax.tree.structure(saved)
    assert type(loaded["opt_state"][1][0]) is optax.ScaleByAdamState
    _assert_resumes_identically(loaded, saved)


def test_optax_chain_state_without_template_is_optax_own_classes_and_resumes(tmp_path):
    saved = _checkpoint()
    ckptschema.save(tmp_path / "opt.safetensors", saved)
    loaded = ckptschema.load(tmp_path / "opt.safetensors")
    assert type(loaded["opt_state"][1][0]) is optax.ScaleByAdamState
    assert jax.tree.structure(loaded) == jax.tree.structure(saved)
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


# ------------------------------------------ optax states without a template: optax's own classes


def _layered_params() -> dict[str, Any]:
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"a": {"w": jax.random.normal(k1, (4, 3)), "b": jnp.zeros(3)}, "c": {"w": jax.random.normal(k2, (3, 2))}}


def _grads(params: Any) -> Any:
    return jax.tree.map(lambda x: 0.1 * x + 0.01, params)


def _node_types(tree: Any) -> list[type]:
    """The type of every node and leaf of a tree, parents first."""
    children, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda c: c is not tree)
    if treedef.num_leaves == 1 and jax.tree_util.treedef_is_leaf(treedef):
        return [type(tree)]
    return [type(tree), *(t for c in children for t in _node_types(c))]


def _assert_loads_as_optax_state(
    tmp_path, tx: optax.GradientTransformation, params: Any, grads: Any = None, **extra: Any
) -> None:
    """Saved after one update and loaded without a template: the same tree, and the next update matches."""
    grads = _grads(params) if grads is None else grads
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    _, state = update(grads, tx.init(params), params)
    saved = {"params": params, "opt_state": state}
    ckptschema.save(tmp_path / "opt.safetensors", saved)
    loaded = ckptschema.load(tmp_path / "opt.safetensors")
    assert jax.tree.structure(loaded) == jax.tree.structure(saved)
    assert _node_types(loaded) == _node_types(saved)
    want_updates, want_state = update(grads, state, params)
    got_updates, got_state = update(grads, loaded["opt_state"], loaded["params"])
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
    jax.tree.map(np.testing.assert_array_equal, got_updates, want_updates)
    jax.tree.map(np.testing.assert_array_equal, got_state, want_state)


def test_optax_multi_transform_state_loads_without_template_as_optax_state(tmp_path):
    tx = optax.multi_transform({"adam": optax.adam(1e-2), "sgd": optax.sgd(0.1)}, {"a": "adam", "c": "sgd"})
    _assert_loads_as_optax_state(tmp_path, tx, _layered_params())


def test_optax_masked_state_with_masked_nodes_loads_without_template(tmp_path):
    _assert_loads_as_optax_state(tmp_path, optax.masked(optax.adam(1e-2), {"a": True, "c": False}), _layered_params())


def test_optax_muon_state_loads_without_template_as_optax_state(tmp_path):
    _assert_loads_as_optax_state(tmp_path, optax.contrib.muon(1e-2), _layered_params())


def test_optax_reduce_on_plateau_state_loads_without_template_as_optax_state(tmp_path):
    tx = optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1))
    _assert_loads_as_optax_state(tmp_path, tx, _layered_params(), value=jnp.float32(2.0))


def test_optax_lookahead_state_and_params_load_without_template(tmp_path):
    tx = optax.lookahead(optax.adam(1e-2), sync_period=2, slow_step_size=0.5)
    params = _layered_params()
    _assert_loads_as_optax_state(tmp_path, tx, optax.LookaheadParams.init_synced(params), _grads(params))


# ------------------------------------------------------- childless pytree nodes: equinox BatchNorm


class _NormedMLP(eqx.Module):
    """After `eqx.nn.make_with_state`, its BatchNorm's StateIndex holds a Module with no fields."""

    first: eqx.nn.Linear
    norm: eqx.nn.BatchNorm
    last: eqx.nn.Linear

    def __init__(self, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.first = eqx.nn.Linear(3, 8, key=k1)
        self.norm = eqx.nn.BatchNorm(8, axis_name="batch", mode="batch")
        self.last = eqx.nn.Linear(8, 2, key=k2)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        h, state = self.norm(self.first(x), state)
        return self.last(jax.nn.relu(h)), state


NORMED_TX = optax.adam(1e-2)


@eqx.filter_jit
def _normed_step(model: _NormedMLP, state: eqx.nn.State, opt_state: Any) -> tuple[Any, ...]:
    def loss(m: _NormedMLP, s: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        pred, s = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(X, s)
        return jnp.mean((pred - Y) ** 2), s

    (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
    updates, opt_state = NORMED_TX.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state, opt_state, value


def _normed_run(model: _NormedMLP, state: eqx.nn.State, opt_state: Any, steps: int) -> list[np.ndarray]:
    losses = []
    for _ in range(steps):
        model, state, opt_state, value = _normed_step(model, state, opt_state)
        losses.append(np.asarray(value))
    return losses


def test_equinox_batchnorm_model_and_state_round_trip_and_resume_identically(tmp_path):
    model, state = eqx.nn.make_with_state(_NormedMLP)(jax.random.key(0))
    opt_state = NORMED_TX.init(eqx.filter(model, eqx.is_array))
    for _ in range(2):
        model, state, opt_state, _ = _normed_step(model, state, opt_state)
    saved = {"model": eqx.filter(model, eqx.is_array), "state": state, "opt_state": opt_state}
    ckptschema.save(tmp_path / "normed.safetensors", saved)

    abstract_model, abstract_state = eqx.filter_eval_shape(eqx.nn.make_with_state(_NormedMLP), jax.random.key(1))
    arrays, static = eqx.partition(abstract_model, _is_abstract)
    template = {
        "model": arrays,
        "state": abstract_state,
        "opt_state": eqx.filter_eval_shape(NORMED_TX.init, arrays),
    }
    loaded = ckptschema.load(tmp_path / "normed.safetensors", template=template)
    assert jax.tree.structure(loaded) == jax.tree.structure(saved)
    resumed = _normed_run(eqx.combine(loaded["model"], static), loaded["state"], loaded["opt_state"], 3)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(_normed_run(model, state, opt_state, 3)))


def test_empty_equinox_module_is_stored_as_a_node_without_children(tmp_path):
    class Empty(eqx.Module):
        pass

    manifest = ckptschema.save(tmp_path / "e.safetensors", {"w": jnp.ones(2), "empty": Empty()})
    assert manifest.skeleton["children"][1] == {
        "kind": "node",
        "type": f"{__name__}.test_empty_equinox_module_is_stored_as_a_node_without_children.<locals>.Empty",
        "keys": [],
        "children": [],
    }
    loaded = ckptschema.load(tmp_path / "e.safetensors", template={"w": jnp.zeros(2), "empty": Empty()})
    assert type(loaded["empty"]) is Empty
