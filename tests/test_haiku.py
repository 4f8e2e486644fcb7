"""ckptschema.haiku on a real model: hk.nets.MLP + hk.BatchNorm, params and state."""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckptschema
import ckptschema.haiku

pytestmark = pytest.mark.framework

X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)


def _model(widths: tuple[int, int]) -> hk.TransformedWithState:
    def forward(x: jax.Array, is_training: bool) -> jax.Array:
        x = hk.nets.MLP(widths, activate_final=True)(x)
        return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.5)(x, is_training)

    return hk.transform_with_state(forward)


MODEL = _model((8, 4))


def _trained() -> dict[str, Any]:
    params, state = MODEL.init(jax.random.key(0), X, True)
    _, state = MODEL.apply(params, state, None, X, True)  # moves the BatchNorm averages
    return {"params": params, "state": state}


def _apply(tree: dict[str, Any]) -> jax.Array:
    out, _ = MODEL.apply(tree["params"], tree["state"], None, X, False)
    return out


def test_params_and_state_round_trip_without_template(tmp_path):
    tree = _trained()
    ckptschema.haiku.save(tmp_path / "m.safetensors", tree)
    loaded = ckptschema.haiku.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(_apply(loaded), _apply(tree))


def test_params_and_state_round_trip_with_abstract_template(tmp_path):
    tree = _trained()
    ckptschema.haiku.save(tmp_path / "m.safetensors", tree)
    params, state = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), X, True))
    loaded = ckptschema.haiku.load(tmp_path / "m.safetensors", template={"params": params, "state": state})
    np.testing.assert_array_equal(_apply(loaded), _apply(tree))


def test_params_and_state_saved_separately_round_trip(tmp_path):
    tree = _trained()
    ckptschema.haiku.save(tmp_path / "params.safetensors", tree["params"])
    ckptschema.haiku.save(tmp_path / "state.safetensors", tree["state"])
    params, state = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), X, True))
    loaded = {
        "params": ckptschema.haiku.load(tmp_path / "params.safetensors", template=params),
        "state": ckptschema.haiku.load(tmp_path / "state.safetensors", template=state),
    }
    np.testing.assert_array_equal(_apply(loaded), _apply(tree))


def test_module_names_with_tilde_are_kept_exactly(tmp_path):
    tree = _trained()
    manifest = ckptschema.haiku.save(tmp_path / "m.safetensors", tree)
    loaded = ckptschema.haiku.load(tmp_path / "m.safetensors")
    assert list(loaded["params"]) == list(tree["params"]) == ["mlp/~/linear_0", "mlp/~/linear_1", "batch_norm"]
    assert list(loaded["state"]) == list(tree["state"])
    assert "state.batch_norm/~/mean_ema.average" in manifest.tensors
    assert "params.mlp/~/linear_0.w" in manifest.tensors


def test_save_records_haiku_framework_for_plain_dicts(tmp_path):
    assert ckptschema.haiku.save(tmp_path / "m.safetensors", _trained()).framework == "haiku"
    assert ckptschema.read_manifest(tmp_path / "m.safetensors").framework == "haiku"


def test_model_of_other_shape_fails_naming_path(tmp_path):
    ckptschema.haiku.save(tmp_path / "m.safetensors", _trained())
    params, state = jax.eval_shape(lambda: _model((8, 5)).init(jax.random.key(0), X, True))
    with pytest.raises(ckptschema.ValidationError) as info:
        ckptschema.haiku.load(tmp_path / "m.safetensors", template={"params": params, "state": state})
    lines = str(info.value).splitlines()
    assert "    params/mlp/~/linear_1/w: shape (8, 4) in file, (8, 5) in template" in lines
    assert "    state/batch_norm/~/mean_ema/average: shape (1, 4) in file, (1, 5) in template" in lines


def test_serialize_deserialize_aliases_round_trip_bytes():
    tree = _trained()
    np.testing.assert_array_equal(_apply(ckptschema.haiku.deserialize(ckptschema.haiku.serialize(tree))), _apply(tree))


def test_serialize_and_deserialize_take_safejax_keyword_names(tmp_path):
    tree = _trained()
    manifest = ckptschema.haiku.serialize(params=tree, filename=tmp_path / "kw.safetensors")
    loaded = ckptschema.haiku.deserialize(path_or_buf=tmp_path / "kw.safetensors")
    assert manifest.framework == "haiku"
    np.testing.assert_array_equal(_apply(loaded), _apply(tree))
