"""ckptschema.flax on real models: a linen Dense+BatchNorm MLP, a TrainState, an nnx Module."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from flax import nnx
from flax.core import FrozenDict, freeze
from flax.training import train_state

import ckptschema
import ckptschema.flax

pytestmark = pytest.mark.framework

X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)


# ------------------------------------------------------------------------------- linen


class MLP(nn.Module):
    features: tuple[int, int] = (8, 4)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.features[0])(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(self.features[1])(nn.relu(x))


def _linen_variables() -> dict[str, Any]:
    model = MLP()
    variables = model.init(jax.random.key(0), X)
    _, updates = model.apply(variables, X, train=True, mutable=["batch_stats"])
    return {**variables, **updates}


def test_linen_dict_round_trips_without_template(tmp_path):
    variables = _linen_variables()
    ckptschema.flax.save(tmp_path / "m.safetensors", variables)
    loaded = ckptschema.flax.load(tmp_path / "m.safetensors")
    assert type(loaded) is dict and type(loaded["params"]) is dict
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


def test_linen_round_trips_with_abstract_template(tmp_path):
    variables = _linen_variables()
    ckptschema.flax.save(tmp_path / "m.safetensors", variables)
    template = jax.eval_shape(MLP().init, jax.random.key(0), X)
    loaded = ckptschema.flax.load(tmp_path / "m.safetensors", template=template)
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


def test_linen_frozendict_stays_frozen(tmp_path):
    variables = freeze(_linen_variables())
    ckptschema.flax.save(tmp_path / "m.safetensors", variables)
    loaded = ckptschema.flax.load(tmp_path / "m.safetensors")
    assert type(loaded) is FrozenDict and type(loaded["params"]["Dense_0"]) is FrozenDict
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


def test_linen_records_flax_framework_and_keys(tmp_path):
    manifest = ckptschema.flax.save(tmp_path / "m.safetensors", _linen_variables())
    assert manifest.framework == "flax"
    assert "params.Dense_0.kernel" in manifest.tensors
    assert "batch_stats.BatchNorm_0.mean" in manifest.tensors


def test_frozendict_is_detected_as_flax_by_core_save(tmp_path):
    manifest = ckptschema.save(tmp_path / "m.safetensors", freeze({"params": {"w": jnp.ones(2)}}))
    assert manifest.framework == "flax"
    assert manifest.data["skeleton"]["type"] == "flax.FrozenDict"


def test_linen_model_of_other_shape_fails_naming_path(tmp_path):
    ckptschema.flax.save(tmp_path / "m.safetensors", _linen_variables())
    template = jax.eval_shape(MLP((8, 5)).init, jax.random.key(0), X)
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.flax.load(tmp_path / "m.safetensors", template=template)
    assert "    params/Dense_1/kernel: shape (8, 4) in file, (8, 5) in template" in str(info.value).splitlines()
    assert [i.path for i in info.value.issues] == ["params/Dense_1/bias", "params/Dense_1/kernel"]


def test_serialize_deserialize_aliases_round_trip_bytes():
    variables = _linen_variables()
    loaded = ckptschema.flax.deserialize(ckptschema.flax.serialize(variables))
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


def test_serialize_and_deserialize_take_safejax_keyword_names(tmp_path):
    variables = _linen_variables()
    manifest = ckptschema.flax.serialize(params=variables, filename=tmp_path / "kw.safetensors")
    loaded = ckptschema.flax.deserialize(path_or_buf=tmp_path / "kw.safetensors")
    assert manifest.framework == "flax"
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


def test_safejax_style_file_without_manifest_loads_with_template(tmp_path):
    variables = _linen_variables()
    flat = {".".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(variables)}
    safetensors.numpy.save_file(flat, str(tmp_path / "safejax.safetensors"))  # what safejax writes
    template = jax.eval_shape(MLP().init, jax.random.key(0), X)
    loaded = ckptschema.flax.deserialize(tmp_path / "safejax.safetensors", template)
    np.testing.assert_array_equal(MLP().apply(loaded, X), MLP().apply(variables, X))


# -------------------------------------------------------------------------- TrainState


class TrainState(train_state.TrainState):
    batch_stats: Any


def _new_state() -> TrainState:
    variables = MLP().init(jax.random.key(0), X)
    return TrainState.create(
        apply_fn=MLP().apply, params=variables["params"], batch_stats=variables["batch_stats"], tx=optax.adam(1e-2)
    )


@jax.jit
def _train_step(state: TrainState, x: jax.Array) -> tuple[TrainState, jax.Array]:
    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        out, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean((out - 1.0) ** 2), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"]), loss


def _train(state: TrainState, steps: int) -> tuple[TrainState, list[np.ndarray]]:
    losses = []
    for i in range(steps):
        state, loss = _train_step(state, X * (i + 1))
        losses.append(np.asarray(loss))
    return state, losses


def test_train_state_round_trips_and_training_continues_identically(tmp_path):
    state, _ = _train(_new_state(), 3)
    ckptschema.flax.save(tmp_path / "state.safetensors", state)
    loaded = ckptschema.flax.load(tmp_path / "state.safetensors", template=jax.eval_shape(_new_state))
    assert type(loaded) is TrainState and int(loaded.step) == 3
    continued, losses = _train(state, 3)
    resumed, resumed_losses = _train(loaded, 3)
    np.testing.assert_array_equal(np.stack(resumed_losses), np.stack(losses))
    jax.tree.map(np.testing.assert_array_equal, resumed.params, continued.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, continued.opt_state)


def test_train_state_python_step_takes_the_form_of_its_template_leaf(tmp_path):
    state, _ = _train(_new_state(), 3)
    ckptschema.flax.save(tmp_path / "state.safetensors", state.replace(step=3))
    abstract = ckptschema.flax.load(tmp_path / "state.safetensors", template=jax.eval_shape(_new_state))
    assert isinstance(abstract.step, jax.Array) and abstract.step.dtype == jnp.int32 and abstract.step.weak_type
    assert int(abstract.step) == 3
    concrete = ckptschema.flax.load(tmp_path / "state.safetensors", template=_new_state())
    assert type(concrete.step) is int and concrete.step == 3


def test_flax_struct_dataclass_without_fields_loads_through_template(tmp_path):
    @flax.struct.dataclass
    class Nothing:
        pass

    ckptschema.flax.save(tmp_path / "n.safetensors", {"w": jnp.ones(2), "nothing": Nothing()})
    loaded = ckptschema.flax.load(tmp_path / "n.safetensors", template={"w": jnp.zeros(2), "nothing": Nothing()})
    assert type(loaded["nothing"]) is Nothing


def test_train_state_without_template_says_to_pass_one(tmp_path):
    ckptschema.flax.save(tmp_path / "state.safetensors", _new_state())
    with pytest.raises(ckptschema.CkptSchemaError, match="only rebuilds through a template; pass template="):
        ckptschema.flax.load(tmp_path / "state.safetensors")


# --------------------------------------------------------------------------------- nnx


class Net(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(3, width, rngs=rngs), nnx.Linear(width, 2, rngs=rngs)])
        self.norm = nnx.BatchNorm(width, momentum=0.5, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.norm(self.layers[0](x)))
        return self.layers[1](self.dropout(x))


def _values(model: nnx.Pytree) -> Any:
    """The model's state as numpy arrays (PRNG keys as their key data), for comparisons."""

    def plain(a: jax.Array) -> np.ndarray:
        return np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a)

    return jax.tree.map(plain, nnx.to_pure_dict(nnx.state(model)))


def _trained_net(width: int = 8, seed: int = 0) -> Net:
    net = Net(width, nnx.Rngs(seed))
    net(X)  # train mode: updates the batch statistics and draws dropout keys
    return net


def test_nnx_load_into_gives_identical_outputs(tmp_path):
    net = _trained_net()
    ckptschema.flax.save(tmp_path / "net.safetensors", net)
    other = Net(8, nnx.Rngs(1))
    ckptschema.flax.load_into(other, tmp_path / "net.safetensors")
    net.eval()
    other.eval()
    np.testing.assert_array_equal(other(X), net(X))


def test_nnx_load_into_restores_dropout_rng_state(tmp_path):
    net = _trained_net()
    ckptschema.flax.save(tmp_path / "net.safetensors", net)
    other = Net(8, nnx.Rngs(1))
    ckptschema.flax.load_into(other, tmp_path / "net.safetensors")
    np.testing.assert_array_equal(other(X), net(X))  # train mode: the same dropout masks


def test_nnx_state_without_template_keeps_variable_types_and_int_keys(tmp_path):
    net = _trained_net()
    ckptschema.flax.save(tmp_path / "net.safetensors", nnx.state(net))
    state = ckptschema.flax.load(tmp_path / "net.safetensors")
    assert type(state) is nnx.State and list(state["layers"].keys()) == [0, 1]
    assert type(state["layers"][0]["kernel"]) is nnx.Param
    assert type(state["norm"]["mean"]) is nnx.BatchStat
    assert type(state["dropout"]["rngs"]["key"]) is nnx.RngKey
    assert state["dropout"]["rngs"]["key"].get_metadata()["tag"] == "default"
    graphdef, _ = nnx.split(net)
    restored = nnx.merge(graphdef, state)
    net.eval()
    restored.eval()
    np.testing.assert_array_equal(restored(X), net(X))


def test_nnx_metadata_outside_the_format_is_not_stored(tmp_path):
    state = {"w": nnx.Param(jnp.ones(2), scale=float("inf"), name="w")}
    manifest = ckptschema.flax.save(tmp_path / "m.safetensors", state)
    assert manifest.skeleton["children"][0]["metadata"] == {"eager_sharding": True, "hijax": False, "ref": False}
    assert ckptschema.flax.load(tmp_path / "m.safetensors")["w"].get_metadata() == {
        "eager_sharding": True,
        "hijax": False,
        "ref": False,
    }
    with_template = ckptschema.flax.load(tmp_path / "m.safetensors", template=state)["w"]
    assert with_template.get_metadata() == state["w"].get_metadata()


def test_nnx_state_without_template_has_the_saved_tree_structure(tmp_path):
    state = nnx.state(_trained_net())
    ckptschema.flax.save(tmp_path / "net.safetensors", state)
    loaded = ckptschema.flax.load(tmp_path / "net.safetensors")
    assert type(loaded) is nnx.State and type(loaded.raw_mapping["layers"]) is dict
    assert jax.tree.structure(loaded) == jax.tree.structure(state)
    jax.tree.map(lambda a, b: None, state, loaded)


def test_nnx_state_with_template_has_the_template_tree_structure(tmp_path):
    ckptschema.flax.save(tmp_path / "net.safetensors", nnx.state(_trained_net()))
    template = nnx.state(Net(8, nnx.Rngs(1)))
    loaded = ckptschema.flax.load(tmp_path / "net.safetensors", template=template)
    assert jax.tree.structure(loaded) == jax.tree.structure(template)


def test_nnx_optimizer_state_loads_with_its_tree_structure(tmp_path):
    optimizer = nnx.Optimizer(_trained_net(), optax.adam(1e-2), wrt=nnx.Param)
    state = nnx.state(optimizer)
    ckptschema.flax.save(tmp_path / "opt.safetensors", optimizer)
    template = nnx.state(nnx.Optimizer(Net(8, nnx.Rngs(1)), optax.adam(1e-2), wrt=nnx.Param))
    for loaded in (
        ckptschema.flax.load(tmp_path / "opt.safetensors"),
        ckptschema.flax.load(tmp_path / "opt.safetensors", template=template),
        ckptschema.flax.load(tmp_path / "opt.safetensors", template=jax.eval_shape(lambda: template)),
    ):
        assert jax.tree.structure(loaded) == jax.tree.structure(state)
        jax.tree.map(lambda a, b: None, state, loaded)


def test_nnx_round_trips_with_abstract_template(tmp_path):
    net = _trained_net()
    ckptschema.flax.save(tmp_path / "net.safetensors", net)
    abstract = nnx.eval_shape(lambda: Net(8, nnx.Rngs(0)))
    graphdef, template = nnx.split(abstract)
    restored = nnx.merge(graphdef, ckptschema.flax.load(tmp_path / "net.safetensors", template=template))
    np.testing.assert_array_equal(restored(X), net(X))


def test_nnx_records_framework_and_unwrapped_keys(tmp_path):
    manifest = ckptschema.flax.save(tmp_path / "net.safetensors", _trained_net())
    assert manifest.framework == "flax.nnx"
    assert sorted(manifest.tensors) == [
        "dropout.rngs.count",
        "dropout.rngs.key",
        "layers.0.bias",
        "layers.0.kernel",
        "layers.1.bias",
        "layers.1.kernel",
        "norm.bias",
        "norm.mean",
        "norm.scale",
        "norm.var",
    ]
    assert manifest.tensors["dropout.rngs.key"].dtype == "uint32"


def test_nnx_model_of_other_shape_fails_and_is_left_untouched(tmp_path):
    ckptschema.flax.save(tmp_path / "net.safetensors", _trained_net())
    other = Net(16, nnx.Rngs(1))
    before = _values(other)
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.flax.load_into(other, tmp_path / "net.safetensors")
    assert "    layers/0/kernel: shape (3, 8) in file, (3, 16) in template" in str(info.value).splitlines()
    assert [i.path for i in info.value.issues] == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/kernel",
        "norm/bias",
        "norm/mean",
        "norm/scale",
        "norm/var",
    ]
    jax.tree.map(np.testing.assert_array_equal, _values(other), before)


def test_nnx_variable_type_mismatch_is_a_structure_issue(tmp_path):
    state = nnx.State({"w": nnx.BatchStat(jnp.ones(2))})
    ckptschema.flax.save(tmp_path / "s.safetensors", state)
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.flax.load(tmp_path / "s.safetensors", template=nnx.State({"w": nnx.Param(jnp.ones(2))}))
    assert [str(i) for i in info.value.issues] == [
        "w: structure wrapper flax.nnx.BatchStat in file, wrapper flax.nnx.Param in template"
    ]


def test_nnx_optimizer_state_round_trips(tmp_path):
    net = _trained_net()
    optimizer = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)
    grads = nnx.state(net, nnx.Param)
    optimizer.update(net, grads)
    ckptschema.flax.save(tmp_path / "opt.safetensors", optimizer)
    other = nnx.Optimizer(Net(8, nnx.Rngs(1)), optax.adam(1e-2), wrt=nnx.Param)
    ckptschema.flax.load_into(other, tmp_path / "opt.safetensors")
    jax.tree.map(np.testing.assert_array_equal, _values(other), _values(optimizer))
