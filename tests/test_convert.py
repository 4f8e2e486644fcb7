"""`ckptschema convert`: other tools' checkpoints rewritten with a manifest, bit for bit."""

from __future__ import annotations

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import ckptschema
from ckptschema.cli import main

from .helpers import assert_same_tree


def _convert(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["convert", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_plain_safetensors_keeps_its_keys_and_metadata(tmp_path, capsys):
    flat = {"encoder.w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, ml_dtypes.bfloat16)}
    safetensors.numpy.save_file(flat, tmp_path / "plain.safetensors", metadata={"format": "pt"})
    src, dst = tmp_path / "plain.safetensors", tmp_path / "out.safetensors"
    code, out, _ = _convert(capsys, src, dst)
    assert (code, out) == (0, f"{src} (safetensors) -> {dst}: 2 tensors, 9 parameters, 30 B\n")
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors"), flat)
    assert safetensors.numpy.load_file(tmp_path / "out.safetensors").keys() == flat.keys()
    with safetensors.safe_open(tmp_path / "out.safetensors", "np") as f:
        assert f.metadata()["format"] == "pt"


def test_safejax_keys_become_nested_dicts(tmp_path, capsys):
    params = {"params": {"Dense_0": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}}
    flat = {
        "params.Dense_0.kernel": params["params"]["Dense_0"]["kernel"],
        "params.Dense_0.bias": np.zeros(3, np.float32),
    }
    safetensors.numpy.save_file(flat, tmp_path / "safejax.safetensors")
    code, _, _ = _convert(capsys, tmp_path / "safejax.safetensors", tmp_path / "out.safetensors", "--from", "safejax")
    assert code == 0
    template = {"params": {"Dense_0": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}}
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors", template=template), params)


def test_pytree2safetensors_keys_become_dicts_and_lists(tmp_path, capsys):
    flat = {"@layers#0@w": np.full(2, 5, np.int8), "@layers#1@w": np.full(2, 6, np.int8), "@head.scale": np.ones(1)}
    safetensors.numpy.save_file(flat, tmp_path / "p2s.safetensors")
    code, _, _ = _convert(
        capsys, tmp_path / "p2s.safetensors", tmp_path / "out.safetensors", "--from", "pytree2safetensors"
    )
    assert code == 0
    expected = {"layers": [{"w": np.full(2, 5, np.int8)}, {"w": np.full(2, 6, np.int8)}], "head": {"scale": np.ones(1)}}
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors", template=expected), expected)


def test_a_key_that_is_both_a_tensor_and_a_path_is_refused(tmp_path, capsys):
    flat = {"a": np.ones(1, np.float32), "a.b": np.ones(1, np.float32)}
    safetensors.numpy.save_file(flat, tmp_path / "clash.safetensors")
    code, _, err = _convert(capsys, tmp_path / "clash.safetensors", tmp_path / "out.safetensors", "--from", "safejax")
    assert code == 2
    assert (
        err
        == f"ckptschema: error: {tmp_path / 'clash.safetensors'}: tensor key 'a.b' goes through a, which is a tensor\n"
    )
    assert not os.path.exists(tmp_path / "out.safetensors")


def test_list_indices_with_a_hole_are_refused(tmp_path, capsys):
    safetensors.numpy.save_file({"#0": np.ones(1), "#2": np.ones(1)}, tmp_path / "hole.safetensors")
    code, _, err = _convert(
        capsys, tmp_path / "hole.safetensors", tmp_path / "out.safetensors", "--from", "pytree2safetensors"
    )
    assert code == 2 and "list <root> has indices [0, 2], expected 0..n-1" in err


def test_a_ckptschema_checkpoint_is_not_converted_again(tmp_path, capsys):
    ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(2, np.float32)})
    code, _, err = _convert(capsys, tmp_path / "m.safetensors", tmp_path / "out.safetensors")
    assert code == 2 and "already a ckptschema checkpoint" in err


def test_a_fifo_source_is_refused_without_hanging(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    code, _, err = _convert(capsys, tmp_path / "pipe", tmp_path / "out.safetensors")
    assert code == 2 and "not a regular file" in err


@pytest.mark.framework
def test_flax_msgpack_converts_with_scalars_and_bfloat16(tmp_path, capsys):
    from flax import serialization

    state = {
        "params": {"kernel": np.arange(4, dtype=np.float32).reshape(2, 2), "bias": np.ones(2, jnp.bfloat16)},
        "step": 7,
    }
    (tmp_path / "state.msgpack").write_bytes(serialization.to_bytes(state))
    code, out, _ = _convert(capsys, tmp_path / "state.msgpack", tmp_path / "out.safetensors")
    assert code == 0 and "(flax-msgpack)" in out
    assert ckptschema.read_manifest(tmp_path / "out.safetensors").framework == "flax"
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors"), state)


@pytest.mark.framework
def test_bytes_that_are_no_known_format_are_a_clear_error(tmp_path, capsys):
    (tmp_path / "junk.bin").write_bytes(b"\xc1" * 64)  # 0xc1 is never valid msgpack
    code, _, err = _convert(capsys, tmp_path / "junk.bin", tmp_path / "out.safetensors")
    assert code == 2 and f"{tmp_path / 'junk.bin'}: not a flax msgpack checkpoint" in err


@pytest.mark.framework
def test_orbax_directory_converts(tmp_path, capsys):
    import orbax.checkpoint as ocp

    tree = {"layer": {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.zeros(2, np.int32)}}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "orbax", tree)
    code, out, _ = _convert(capsys, tmp_path / "orbax", tmp_path / "out.safetensors")
    assert code == 0 and "(orbax)" in out
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors", template=tree), tree)


def test_pytree2safetensors_keys_of_a_root_attribute_convert(tmp_path, capsys):
    flat = {"layers#0@query": np.full(2, 5, np.int8), "layers#1@query": np.full(2, 6, np.int8), "head.w": np.ones(1)}
    safetensors.numpy.save_file(flat, tmp_path / "p2s.safetensors")
    code, _, err = _convert(
        capsys, tmp_path / "p2s.safetensors", tmp_path / "out.safetensors", "--from", "pytree2safetensors"
    )
    assert (code, err) == (0, "")
    expected = {
        "layers": [{"query": np.full(2, 5, np.int8)}, {"query": np.full(2, 6, np.int8)}],
        "head": {"w": np.ones(1)},
    }
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors", template=expected), expected)


def test_a_pytree2safetensors_root_leaf_converts_to_a_bare_tensor(tmp_path, capsys):
    safetensors.numpy.save_file({"": np.arange(3, dtype=np.int16)}, tmp_path / "p2s.safetensors")
    code, _, _ = _convert(
        capsys, tmp_path / "p2s.safetensors", tmp_path / "out.safetensors", "--from", "pytree2safetensors"
    )
    assert code == 0
    root = np.arange(3, dtype=np.int16)
    assert_same_tree(ckptschema.load(tmp_path / "out.safetensors", template=root), root)
