"""ckptschema.objax on a real model: a Sequential with BatchNorm and Dropout, and its optimizer."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import objax
import pytest
import safetensors.numpy

import ckptschema
import ckptschema.objax

pytestmark = pytest.mark.framework

X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)


def _model(width: int = 8, seed: int = 0) -> objax.nn.Sequential:
    objax.random.DEFAULT_GENERATOR.seed(seed)
    return objax.nn.Sequential(
        [
            objax.nn.Linear(3, width),
            objax.nn.BatchNorm0D(width, momentum=0.5),
            objax.functional.relu,
            # Its own generator (not objax's global one), so each model's dropout state is its own.
            objax.nn.Dropout(0.5, generator=objax.random.Generator(seed)),
            objax.nn.Linear(width, 2),
        ]
    )


def _trained() -> objax.nn.Sequential:
    model = _model()
    model(X, training=True)  # moves the BatchNorm averages and the dropout generator
    return model


def _values(vc: objax.VarCollection) -> dict[str, np.ndarray]:
    return {name: np.asarray(var.value) for name, var in vc.items()}


def test_load_into_gives_identical_outputs(tmp_path):
    model = _trained()
    ckptschema.objax.save(tmp_path / "m.safetensors", model.vars())
    other = _model(seed=1)
    ckptschema.objax.load_into(other.vars(), tmp_path / "m.safetensors")
    np.testing.assert_array_equal(other(X, training=False), model(X, training=False))


def test_load_into_restores_random_state(tmp_path):
    model = _trained()
    ckptschema.objax.save(tmp_path / "m.safetensors", model)
    other = _model(seed=1)
    ckptschema.objax.load_into(other, tmp_path / "m.safetensors")
    np.testing.assert_array_equal(other(X, training=True), model(X, training=True))  # the same dropout masks


def test_load_without_template_keeps_variable_kinds(tmp_path):
    model = _trained()
    ckptschema.objax.save(tmp_path / "m.safetensors", model.vars())
    loaded = ckptschema.objax.load(tmp_path / "m.safetensors")
    assert type(loaded) is objax.VarCollection
    assert {name: type(var).__name__ for name, var in loaded.items()} == {
        name: type(var).__name__ for name, var in model.vars().items()
    }
    assert type(loaded["(Sequential)[3](Dropout).keygen(Generator)._key"]) is objax.variable.RandomState
    assert type(loaded["(Sequential)[1](BatchNorm0D).running_mean"]) is objax.StateVar


def test_load_without_template_then_apply_gives_identical_outputs(tmp_path):
    model = _trained()
    ckptschema.objax.save(tmp_path / "m.safetensors", model.vars())
    loaded = ckptschema.objax.load(tmp_path / "m.safetensors")
    other = _model(seed=1)
    for name, var in other.vars().items():
        var.assign(loaded[name].value, check=False)
    np.testing.assert_array_equal(other(X, training=False), model(X, training=False))


def test_load_with_template_returns_new_variables_and_leaves_template_alone(tmp_path):
    model = _trained()
    ckptschema.objax.save(tmp_path / "m.safetensors", model.vars())
    other = _model(seed=1)
    before = _values(other.vars())
    loaded = ckptschema.objax.load(tmp_path / "m.safetensors", template=other.vars())
    assert _values(loaded).keys() == before.keys()
    for name, value in _values(loaded).items():
        np.testing.assert_array_equal(value, np.asarray(model.vars()[name].value))
        np.testing.assert_array_equal(np.asarray(other.vars()[name].value), before[name])


def test_save_records_objax_framework_and_names_as_keys(tmp_path):
    manifest = ckptschema.objax.save(tmp_path / "m.safetensors", _trained().vars())
    assert manifest.framework == "objax"
    assert "(Sequential)[0](Linear).w" in manifest.tensors


def test_var_collection_is_detected_as_objax_by_core_save(tmp_path):
    assert ckptschema.save(tmp_path / "m.safetensors", {"model": _trained().vars()}).framework == "objax"


def test_optimizer_state_and_train_refs_round_trip(tmp_path):
    model = _trained()
    optimizer = objax.optimizer.Adam(model.vars())
    # Stand-in for a training step: objax's optimizers assign with check=True, which fails on JAX 0.10.
    for i, var in enumerate(optimizer.vars().subset(objax.StateVar)):
        var.assign(var.value + i + 1, check=False)
    ckptschema.objax.save(tmp_path / "m.safetensors", model.vars() + optimizer.vars())
    other = _model(seed=1)
    other_optimizer = objax.optimizer.Adam(other.vars())
    ckptschema.objax.load_into(other.vars() + other_optimizer.vars(), tmp_path / "m.safetensors")
    assert _values(other.vars() + other_optimizer.vars()).keys() == _values(model.vars() + optimizer.vars()).keys()
    for name, value in _values(model.vars() + optimizer.vars()).items():
        np.testing.assert_array_equal(_values(other.vars() + other_optimizer.vars())[name], value)
    loaded = ckptschema.objax.load(tmp_path / "m.safetensors")
    assert type(loaded["(Adam).train_vars(ModuleList)[0]"]) is objax.TrainRef


def test_model_of_other_shape_fails_and_assigns_nothing(tmp_path):
    ckptschema.objax.save(tmp_path / "m.safetensors", _trained().vars())
    other = objax.nn.Sequential([objax.nn.Linear(3, 8), objax.nn.BatchNorm0D(8), objax.nn.Linear(8, 5)])
    before = _values(other.vars())
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.objax.load_into(other.vars(), tmp_path / "m.safetensors")
    lines = str(info.value).splitlines()
    assert "    (Sequential)[2](Linear).w: float32[8,5] in template, not in file" in lines
    assert "    (Sequential)[4](Linear).w: float32[8,2] in file, not in template" in lines
    after = _values(other.vars())
    for name, value in before.items():  # the layers that did match were not assigned either
        np.testing.assert_array_equal(after[name], value)


def test_safejax_style_file_without_manifest_loads_into_model(tmp_path):
    model = _trained()
    safetensors.numpy.save_file(_values(model.vars()), str(tmp_path / "safejax.safetensors"))  # what safejax writes
    other = _model(seed=1)
    ckptschema.objax.load_into(other, tmp_path / "safejax.safetensors")
    np.testing.assert_array_equal(other(X, training=False), model(X, training=False))


def test_serialize_deserialize_aliases_round_trip_bytes():
    model = _trained()
    loaded = ckptschema.objax.deserialize(ckptschema.objax.serialize(model.vars()))
    for name, value in _values(model.vars()).items():
        np.testing.assert_array_equal(np.asarray(loaded[name].value), value)


def test_serialize_and_deserialize_take_safejax_keyword_names(tmp_path):
    model = _trained()
    manifest = ckptschema.objax.serialize(params=model, filename=tmp_path / "kw.safetensors")
    loaded = ckptschema.objax.deserialize(path_or_buf=tmp_path / "kw.safetensors")
    assert manifest.framework == "objax"
    for name, value in _values(model.vars()).items():
        np.testing.assert_array_equal(np.asarray(loaded[name].value), value)
