"""penzai models through the generic path: whole models, layers with static fields only included."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from penzai import pz
from penzai.models.transformer.variants import llamalike_common

import ckptschema

pytestmark = pytest.mark.framework

CONFIG = llamalike_common.LlamalikeTransformerConfig(
    num_kv_heads=2,
    query_head_multiplier=1,
    embedding_dim=16,
    projection_dim=8,
    mlp_hidden_dim=32,
    num_decoder_blocks=1,
    vocab_size=50,
    mlp_variant="geglu_approx",
    tie_embedder_and_logits=False,
)


def _frozen_lm(key: jax.Array) -> Any:
    """A small llama-like transformer with its parameters frozen in: its RoPE layers have no children."""
    return pz.freeze_params(llamalike_common.build_llamalike_transformer(CONFIG, init_base_rng=key, name="lm"))


def _logits(model: Any) -> np.ndarray:
    tokens = pz.nx.wrap(jnp.array([[1, 5, 7, 2, 9]])).tag("batch", "seq")
    positions = pz.nx.wrap(jnp.arange(5)[None]).tag("batch", "seq")
    return np.asarray(model(tokens, token_positions=positions).unwrap("batch", "seq", "vocabulary"))


def test_frozen_penzai_transformer_round_trips_with_template(tmp_path):
    model = _frozen_lm(jax.random.key(0))
    ckptschema.save(tmp_path / "lm.safetensors", model)
    template = jax.eval_shape(_frozen_lm, jax.random.key(1))
    loaded = ckptschema.load(tmp_path / "lm.safetensors", template=template)
    assert jax.tree.structure(loaded) == jax.tree.structure(template)
    np.testing.assert_array_equal(_logits(loaded), _logits(model))


def test_penzai_layer_with_only_static_fields_is_a_node_without_children(tmp_path):
    rope = pz.select(_frozen_lm(jax.random.key(0))).at_instances_of(pz.nn.ApplyRoPE).get_sequence()[0]
    manifest = ckptschema.save(tmp_path / "rope.safetensors", {"rope": rope})
    assert manifest.skeleton["children"][0] == {
        "kind": "node",
        "type": "penzai.nn.embeddings.ApplyRoPE",
        "keys": [],
        "children": [],
    }
    assert ckptschema.load(tmp_path / "rope.safetensors", template={"rope": rope})["rope"] == rope
