"""The public API: save, load with and without templates, subtrees, foreign files, metadata."""

from __future__ import annotations

import collections
import inspect
import mmap
import os
import stat
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import ckptschema
from ckptschema import _header, _sources

from .helpers import assert_same_array, assert_same_tree


def _params() -> dict:
    return {
        "params": {
            "Dense_0": {"kernel": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "bias": jnp.ones(4)},
            "Dense_1": {"kernel": jnp.ones((4, 2), jnp.bfloat16), "bias": jnp.zeros(2, jnp.bfloat16)},
        }
    }


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.safetensors"
    ckptschema.save(path, _params())
    return path


def test_file_opens_in_safetensors_with_readable_keys(ckpt):
    with safe_open(ckpt, "flax") as f:
        keys = sorted(f.keys())
        kernel = f.get_tensor("params.Dense_0.kernel")
    assert keys == ["params.Dense_0.bias", "params.Dense_0.kernel", "params.Dense_1.bias", "params.Dense_1.kernel"]
    assert_same_array(kernel, _params()["params"]["Dense_0"]["kernel"])


def test_manifest_lives_in_metadata_beside_user_entries(tmp_path):
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.zeros(2, np.float32)}, metadata={"author": "me"})
    with safe_open(path, "numpy") as f:
        metadata = f.metadata()
    assert sorted(metadata) == ["author", "ckptschema"]
    assert metadata["author"] == "me"


def test_load_without_template_rebuilds_the_saved_tree(ckpt):
    assert_same_tree(ckptschema.load(ckpt), _params())


def test_load_returns_jax_arrays(ckpt):
    leaves = jax.tree_util.tree_leaves(ckptschema.load(ckpt))
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)


def test_load_with_abstract_template_returns_template_structure(ckpt):
    template = jax.eval_shape(_params)
    loaded = ckptschema.load(ckpt, template=template)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(template)
    assert list(loaded["params"]["Dense_0"]) == ["bias", "kernel"]  # eval_shape sorted the keys
    assert_same_tree(loaded, jax.tree_util.tree_map(lambda x: x, _params()))


def test_leaves_are_placed_like_concrete_template_leaves(tmp_path):
    tree = {"free": jnp.ones(3), "pinned": jax.device_put(jnp.zeros(2), jax.devices()[0])}
    ckptschema.save(tmp_path / "m.safetensors", tree)
    loaded = ckptschema.load(tmp_path / "m.safetensors", template=tree)
    assert (loaded["free"].committed, loaded["pinned"].committed) == (False, True)
    assert loaded["pinned"].sharding == tree["pinned"].sharding
    assert_same_tree(loaded, tree)


def test_numpy_template_leaves_give_numpy_arrays(ckpt):
    template = jax.tree_util.tree_map(np.asarray, _params())
    loaded = ckptschema.load(ckpt, template=template)
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(loaded))


def _mapped_template() -> dict:
    """numpy leaves for Dense_0 (memory-mapped on request), abstract ones for Dense_1."""
    params = _params()["params"]
    return {
        "params": {
            "Dense_0": jax.tree.map(np.asarray, params["Dense_0"]),
            "Dense_1": jax.eval_shape(lambda: params["Dense_1"]),
        }
    }


def test_mmap_gives_numpy_template_leaves_as_read_only_views_of_the_file(ckpt):
    loaded = ckptschema.load(ckpt, template=_mapped_template(), mmap=True)
    kernel = loaded["params"]["Dense_0"]["kernel"]
    assert isinstance(kernel, np.ndarray) and not kernel.flags.writeable and not kernel.flags.owndata
    owner = kernel
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner.obj if isinstance(owner, memoryview) else owner, mmap.mmap)
    assert isinstance(loaded["params"]["Dense_1"]["kernel"], jax.Array)
    assert_same_tree(jax.tree.map(np.asarray, loaded), jax.tree.map(np.asarray, _params()), same_classes=False)


def test_mmap_views_keep_their_bytes_when_save_replaces_the_file(ckpt):
    loaded = ckptschema.load(ckpt, template=_mapped_template(), mmap=True)
    ckptschema.save(ckpt, jax.tree.map(lambda x: x + 1, _params()))
    np.testing.assert_array_equal(loaded["params"]["Dense_0"]["kernel"], np.arange(12, dtype=np.float32).reshape(3, 4))


def test_mmap_views_are_verified_like_read_tensors(ckpt):
    source = _sources.FileSource(ckpt)
    start = _header.read_header(source).entries["params.Dense_0.kernel"].start
    source.close()
    data = bytearray(ckpt.read_bytes())
    data[start] ^= 1
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ckptschema.IntegrityError, match=r"'params\.Dense_0\.kernel' fails its blake3 checksum"):
        ckptschema.load(ckpt, template=_mapped_template(), mmap=True, verify=True)


def test_mmap_of_a_plain_safetensors_file_maps_numpy_leaves(tmp_path):
    safetensors.numpy.save_file({"w": np.arange(4, dtype=np.int16)}, tmp_path / "plain.safetensors")
    loaded = ckptschema.load(tmp_path / "plain.safetensors", template={"w": np.zeros(4, np.int16)}, mmap=True)
    assert loaded["w"].tolist() == [0, 1, 2, 3] and not loaded["w"].flags.writeable


def test_loads_with_mmap_gives_views_of_the_bytes():
    data = ckptschema.dumps({"w": np.arange(3, dtype=np.float32)})
    loaded = ckptschema.loads(data, template={"w": np.zeros(3, np.float32)}, mmap=True)
    assert np.shares_memory(loaded["w"], np.frombuffer(data, np.uint8)) and loaded["w"].tolist() == [0, 1, 2]


def test_every_mismatch_is_listed_by_path_and_grouped(ckpt):
    template = jax.eval_shape(_params)
    template["params"]["Dense_0"]["kernel"] = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    template["params"]["Dense_1"]["bias"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    template["params"]["Dense_2"] = {"kernel": jax.ShapeDtypeStruct((2, 2), jnp.float32)}
    del template["params"]["Dense_1"]["kernel"]
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(ckpt, template=template)
    assert str(e.value) == (
        f"{ckpt} does not match the template (4 problems):\n"
        "  missing (1):\n"
        "    params/Dense_2/kernel: float32[2,2] in template, not in file\n"
        "  unexpected (1):\n"
        "    params/Dense_1/kernel: bfloat16[4,2] in file, not in template\n"
        "  shape (1):\n"
        "    params/Dense_0/kernel: shape (3, 4) in file, (4, 4) in template\n"
        "  dtype (1):\n"
        "    params/Dense_1/bias: dtype bfloat16 in file, float32 in template\n"
        "pass strict=False to ignore tensors the template does not have"
    )


def test_validation_error_carries_structured_issues(ckpt):
    template = jax.eval_shape(_params)
    template["params"]["Dense_0"]["kernel"] = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(ckpt, template=template)
    assert e.value.issues == [
        ckptschema.Issue(
            "shape",
            "params/Dense_0/kernel",
            "(3, 4)",
            "(4, 4)",
            "template",
            ("params", "Dense_0", "kernel"),
            (3, 4),
            (4, 4),
        ),
    ]


def test_structure_mismatch_names_both_kinds(tmp_path):
    path = tmp_path / "t.safetensors"
    ckptschema.save(path, {"layers": (np.zeros(2, np.float32),)})
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(path, template={"layers": [np.zeros(2, np.float32)]})
    assert [str(i) for i in e.value.issues] == ["layers: structure tuple in file, list in template"]


def test_nothing_is_cast_or_broadcast(tmp_path):
    path = tmp_path / "t.safetensors"
    ckptschema.save(path, {"w": np.zeros((1, 3), np.float16)})
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(path, template={"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert [i.kind for i in e.value.issues] == ["shape", "dtype"]


def test_non_strict_load_warns_about_unexpected_tensors(ckpt):
    template = jax.eval_shape(_params)
    del template["params"]["Dense_1"]
    with pytest.warns(UserWarning, match=r"ignored 2 tensor\(s\) not in the template: params/Dense_1/kernel"):
        loaded = ckptschema.load(ckpt, template=template, strict=False)
    assert list(loaded["params"]) == ["Dense_0"]


def test_non_strict_load_still_refuses_missing_tensors(ckpt):
    template = jax.eval_shape(_params)
    template["params"]["extra"] = jax.ShapeDtypeStruct((1,), jnp.float32)
    with pytest.raises(ckptschema.ValidationError, match="params/extra: float32\\[1\\] in template, not in file"):
        ckptschema.load(ckpt, template=template, strict=False)


def test_subtree_by_joined_path_loads_only_that_part(ckpt):
    assert_same_tree(ckptschema.load(ckpt, subtree="params.Dense_1"), _params()["params"]["Dense_1"])


def test_subtree_by_key_tuple_is_checked_against_template(ckpt):
    template = {"kernel": jax.ShapeDtypeStruct((3, 3), jnp.float32), "bias": jax.ShapeDtypeStruct((4,), jnp.float32)}
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(ckpt, template=template, subtree=("params", "Dense_0"))
    assert [str(i) for i in e.value.issues] == ["params/Dense_0/kernel: shape (3, 4) in file, (3, 3) in template"]


def test_unknown_subtree_is_an_error(ckpt):
    with pytest.raises(ckptschema.CkptSchemaError, match=r"no subtree 'params.Dense_9' in the checkpoint"):
        ckptschema.load(ckpt, subtree="params.Dense_9")


def test_colliding_keys_are_refused_with_both_paths(tmp_path):
    tree = {"a.b": np.zeros(1, np.float32), "a": {"b": np.ones(1, np.float32)}}
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(tmp_path / "c.safetensors", tree)
    assert str(e.value) == (
        "a.b and a/b both map to the tensor key 'a.b'; pass another separator= (one that no key contains)"
    )
    assert not list(tmp_path.iterdir())


def test_another_separator_resolves_a_collision(tmp_path):
    tree = {"a.b": np.zeros(1, np.float32), "a": {"b": np.ones(1, np.float32)}}
    ckptschema.save(tmp_path / "c.safetensors", tree, separator="/")
    assert_same_tree(ckptschema.load(tmp_path / "c.safetensors"), tree)


def test_int_and_str_keys_stay_distinct(tmp_path):
    tree = {"layers": {0: np.zeros(1, np.int8), 1: np.ones(1, np.int8)}, "names": {"0": 1.0}}
    ckptschema.save(tmp_path / "k.safetensors", tree)
    assert_same_tree(ckptschema.load(tmp_path / "k.safetensors"), tree)


def test_unstorable_leaf_names_its_path(tmp_path):
    with pytest.raises(ckptschema.CkptSchemaError) as e:
        ckptschema.save(tmp_path / "x.safetensors", {"opt": [object()]})
    assert str(e.value) == "opt/0: cannot store a object; leaves must be arrays or bool/int/float/str scalars"


def test_namedtuple_comes_back_as_recorded_name_and_fields(tmp_path):
    State = collections.namedtuple("State", "count mu")
    ckptschema.save(tmp_path / "s.safetensors", State(np.int32(3), np.zeros(2, np.float32)))
    loaded = ckptschema.load(tmp_path / "s.safetensors")
    assert (type(loaded).__name__, loaded._fields) == ("State", ("count", "mu"))
    assert type(loaded) is not State


def test_namedtuple_with_template_comes_back_as_template_class(tmp_path):
    State = collections.namedtuple("State", "count mu")
    state = State(np.int32(3), np.zeros(2, np.float32))
    ckptschema.save(tmp_path / "s.safetensors", state)
    assert type(ckptschema.load(tmp_path / "s.safetensors", template=state)) is State


def test_custom_pytree_node_needs_a_template(tmp_path):
    @jax.tree_util.register_dataclass
    @__import__("dataclasses").dataclass
    class Params:
        w: jax.Array

    ckptschema.save(tmp_path / "p.safetensors", Params(jnp.ones(2)))
    with pytest.raises(ckptschema.CkptSchemaError, match="only rebuilds through a template; pass template="):
        ckptschema.load(tmp_path / "p.safetensors")
    loaded = ckptschema.load(tmp_path / "p.safetensors", template=Params(jax.ShapeDtypeStruct((2,), jnp.float32)))
    assert isinstance(loaded, Params)
    assert_same_array(loaded.w, jnp.ones(2))


def test_python_scalar_matches_weak_typed_template_leaf(tmp_path):
    ckptschema.save(tmp_path / "s.safetensors", {"step": 7, "lr": 0.5})
    template = jax.eval_shape(lambda: {"step": 0, "lr": 0.1})
    loaded = ckptschema.load(tmp_path / "s.safetensors", template=template)
    assert (int(loaded["step"]), loaded["step"].dtype, float(loaded["lr"])) == (7, jnp.int32, 0.5)


def test_scalar_that_overflows_template_dtype_is_a_dtype_issue(tmp_path):
    ckptschema.save(tmp_path / "s.safetensors", {"step": 2**40})
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(tmp_path / "s.safetensors", template=jax.eval_shape(lambda: {"step": 0}))
    assert [str(i) for i in e.value.issues] == ["step: dtype int 1099511627776 in file, int32 in template"]


def test_64_bit_leaves_come_back_as_numpy_when_x64_is_off(tmp_path):
    tree = {"f": np.array([np.pi], np.float64), "i": np.array([2**40], np.int64)}
    ckptschema.save(tmp_path / "x.safetensors", tree)
    loaded = ckptschema.load(tmp_path / "x.safetensors")
    assert all(isinstance(v, np.ndarray) for v in loaded.values())
    assert_same_tree(loaded, tree)


def test_sub_byte_and_fp8_dtypes_are_stored_with_true_dtype(tmp_path):
    tree = {
        "q": np.array([-8, 7, 0], ml_dtypes.int4),
        "f8": np.array([1.5, -2.0], ml_dtypes.float8_e4m3fn),
        "c": np.array([1 + 2j], np.complex128),
    }
    ckptschema.save(tmp_path / "q.safetensors", tree)
    with safe_open(tmp_path / "q.safetensors", "numpy") as f:
        header_dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert header_dtypes == {"q": "U8", "f8": "F8_E4M3", "c": "U8"}
    assert_same_tree(ckptschema.load(tmp_path / "q.safetensors"), tree)


def test_zero_size_and_0d_arrays_round_trip(tmp_path):
    tree = {"empty": np.zeros((0, 5), np.float32), "scalar": np.array(3, np.uint16)}
    ckptschema.save(tmp_path / "z.safetensors", tree)
    assert_same_tree(ckptschema.load(tmp_path / "z.safetensors"), tree)


def test_plain_safetensors_file_loads_with_template(tmp_path):
    path = tmp_path / "plain.safetensors"
    flat = {"params.Dense_0.kernel": np.ones((3, 4), np.float32), "params.Dense_0.bias": np.zeros(4, np.float32)}
    safetensors.numpy.save_file(flat, path)
    template = {
        "params": {
            "Dense_0": {
                "kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32),
                "bias": jax.ShapeDtypeStruct((4,), jnp.float32),
            }
        }
    }
    loaded = ckptschema.load(path, template=template)
    assert_same_array(loaded["params"]["Dense_0"]["kernel"], flat["params.Dense_0.kernel"])


def test_plain_safetensors_file_is_checked_like_any_other(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"w": np.ones((3, 4), np.float32), "extra": np.ones(1, np.int8)}, path)
    with pytest.raises(ckptschema.ValidationError) as e:
        ckptschema.load(path, template={"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)})
    assert [str(i) for i in e.value.issues] == [
        "extra: int8[1] in file, not in template",
        "w: shape (3, 4) in file, (4, 4) in template",
    ]


def test_pytree2safetensors_keys_are_recognised(tmp_path):
    path = tmp_path / "p2s.safetensors"
    safetensors.numpy.save_file({"@layers#0@w": np.full(2, 5, np.float32)}, path)
    loaded = ckptschema.load(path, template={"layers": [{"w": jax.ShapeDtypeStruct((2,), jnp.float32)}]})
    assert_same_array(loaded["layers"][0]["w"], np.full(2, 5, np.float32))


def test_plain_safetensors_file_without_template_loads_flat(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"a.b": np.arange(3, dtype=np.int32)}, path)
    assert_same_tree(ckptschema.load(path), {"a.b": np.arange(3, dtype=np.int32)})


def test_read_manifest_of_plain_file_explains(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"w": np.ones(1, np.float32)}, path)
    with pytest.raises(
        ckptschema.FormatError, match=r"no ckptschema manifest in the header \(a plain safetensors file\)"
    ):
        ckptschema.read_manifest(path)


def test_reserved_metadata_key_is_refused(tmp_path):
    with pytest.raises(ckptschema.CkptSchemaError, match="metadata key 'ckptschema' is reserved"):
        ckptschema.save(tmp_path / "m.safetensors", {}, metadata={"ckptschema": "x"})


def test_framework_can_be_given(tmp_path):
    manifest = ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(1, np.float32)}, framework="haiku")
    assert ckptschema.read_manifest(tmp_path / "m.safetensors").framework == manifest.framework == "haiku"


def test_checksum_none_records_no_digests(tmp_path):
    manifest = ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(1, np.float32)}, checksum=None)
    assert (manifest.checksum, manifest.tensors["w"].digest) == (None, None)


def test_digest_is_of_the_stored_bytes_by_the_recorded_algorithm():
    import hashlib

    import blake3

    array = np.arange(6, dtype=np.float32)
    assert ckptschema.manifest_of({"w": array}).tensors["w"].digest == blake3.blake3(array.tobytes()).hexdigest()
    digest = ckptschema.manifest_of({"w": array}, checksum="sha256").tensors["w"].digest
    assert digest == hashlib.sha256(array.tobytes()).hexdigest()


def test_user_text_that_mimics_a_digest_placeholder_leaves_every_digest_true(tmp_path):
    mimic = '"digests":"' + "A" * 43 + '="}'
    tree = {"w": np.arange(3, dtype=np.float32), mimic: {"v": np.ones(2, np.int8)}, "s": mimic}
    manifest = ckptschema.save(tmp_path / "m.safetensors", tree, metadata={"note": mimic})
    loaded = ckptschema.load(tmp_path / "m.safetensors", verify=True)
    assert ckptschema.read_manifest(tmp_path / "m.safetensors") == manifest
    assert loaded["s"] == mimic and ckptschema.validate(tmp_path / "m.safetensors", deep=True).ok


def test_saving_does_not_change_the_callers_tree(tmp_path):
    tree = {"b": [np.ones(2, np.float32)], "a": {"x": 1}}
    before = repr(tree)
    ckptschema.save(tmp_path / "t.safetensors", tree)
    assert repr(tree) == before


def test_validate_against_schema_reports_changed_weights(tmp_path):
    ckptschema.save(tmp_path / "v1.safetensors", {"w": np.zeros(2, np.float32)})
    ckptschema.save(tmp_path / "v2.safetensors", {"w": np.ones(2, np.float32)})
    schema = ckptschema.read_manifest(tmp_path / "v1.safetensors")
    report = ckptschema.validate(tmp_path / "v2.safetensors", schema)
    assert [(i.kind, i.path) for i in report.issues] == [("checksum", "w")]


def test_validate_never_raises_for_mismatches(ckpt):
    report = ckptschema.validate(ckpt, {"other": np.zeros(1, np.float32)})
    assert not report.ok
    assert str(report).startswith(f"{ckpt}: 5 problems\n")


def test_serialize_and_deserialize_keep_safejax_names(tmp_path):
    tree = {"w": np.ones(2, np.float32)}
    ckptschema.serialize(tree, filename=str(tmp_path / "s.safetensors"))
    assert_same_tree(ckptschema.deserialize(str(tmp_path / "s.safetensors")), tree)
    assert_same_tree(ckptschema.deserialize(ckptschema.serialize(tree)), tree)


def test_loading_emits_no_warnings(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckptschema.load(ckpt, template=jax.eval_shape(_params))


def test_typed_prng_keys_round_trip_as_key_data(tmp_path):
    keys = {"dropout": jax.random.split(jax.random.key(7), 3), "rbg": jax.random.key(1, impl="rbg")}
    manifest = ckptschema.save(tmp_path / "k.safetensors", keys)
    loaded = ckptschema.load(tmp_path / "k.safetensors")
    assert {k: (t.dtype, t.shape) for k, t in manifest.tensors.items()} == {
        "dropout": ("uint32", (3, 2)),
        "rbg": ("uint32", (4,)),
    }
    for name in keys:
        assert loaded[name].dtype == keys[name].dtype
        assert_same_array(jax.random.key_data(loaded[name]), jax.random.key_data(keys[name]))


def test_typed_prng_keys_load_through_an_abstract_template(tmp_path):
    keys = {"rng": jax.random.split(jax.random.key(7), 2)}
    ckptschema.save(tmp_path / "k.safetensors", keys)
    loaded = ckptschema.load(tmp_path / "k.safetensors", template=jax.eval_shape(lambda: keys))
    assert jax.random.uniform(loaded["rng"][0]) == jax.random.uniform(keys["rng"][0])


def test_saved_file_gets_the_permissions_of_a_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(1, np.float32)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644


def test_saving_over_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    ckptschema.save(path, {"w": np.ones(1, np.float32)})
    path.chmod(0o640)
    ckptschema.save(path, {"w": np.zeros(1, np.float32)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def _bytes_read_by_this_process() -> int:
    """What the kernel counts as read by this process (``rchar``: every read call, cache hits included)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_validating_a_plain_file_reads_no_tensor_bytes(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"w": np.ones((1024, 1024), np.float32)}, path)
    before = _bytes_read_by_this_process()
    report = ckptschema.validate(path, {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)})
    assert report.ok
    assert _bytes_read_by_this_process() - before < 64 << 10  # the header and /proc; the tensor is 4 MiB


def test_serialize_and_deserialize_take_safejax_keyword_names(tmp_path):
    tree = {"w": np.ones(2, np.float32)}
    manifest = ckptschema.serialize(params=tree, filename=tmp_path / "s.safetensors")
    assert isinstance(manifest, ckptschema.Manifest)
    assert_same_tree(ckptschema.deserialize(path_or_buf=tmp_path / "s.safetensors"), tree)
    assert_same_tree(ckptschema.deserialize(path_or_buf=ckptschema.serialize(params=tree), template=tree), tree)


def test_read_manifest_gives_back_the_header_user_metadata(tmp_path):
    tree = {"w": np.ones(2, np.float32)}
    ckptschema.save(tmp_path / "m.safetensors", tree, metadata={"run": "7", "note": "é"})
    assert ckptschema.read_manifest(tmp_path / "m.safetensors").metadata == {"run": "7", "note": "é"}


def test_save_returns_the_manifest_with_the_user_metadata_it_wrote(tmp_path):
    manifest = ckptschema.save(tmp_path / "m.safetensors", {"w": np.ones(2, np.float32)}, metadata={"run": "7"})
    assert manifest.metadata == {"run": "7"} == ckptschema.read_manifest(tmp_path / "m.safetensors").metadata


def test_manifest_of_carries_the_metadata_save_would_write():
    manifest = ckptschema.manifest_of({"w": np.ones(2, np.float32)}, metadata={"run": "7"})
    assert manifest.metadata == {"run": "7"}
    assert manifest == ckptschema.manifest_of({"w": np.ones(2, np.float32)})  # metadata is outside equality


def test_pytree2safetensors_keys_of_a_root_attribute_are_recognised(tmp_path):
    Model = collections.namedtuple("Model", ["layers", "scale"])
    path = tmp_path / "p2s.safetensors"
    layers = {f"layers#{i}@query": np.full(2, i, np.float32) for i in range(11)}
    safetensors.numpy.save_file({**layers, "scale": np.ones((), np.float32)}, path)
    template = Model([{"query": np.zeros(2, np.float32)} for _ in range(11)], np.zeros((), np.float32))
    loaded = ckptschema.load(path, template=template)
    assert type(loaded) is Model
    assert_same_array(loaded.layers[10]["query"], np.full(2, 10, np.float32))
    assert_same_array(loaded.scale, np.ones((), np.float32))


def test_loads_takes_the_options_of_load():
    data = ckptschema.dumps({"w": np.arange(3, dtype=np.float32)})
    loaded = ckptschema.loads(data, progress=True, verify=True, strict=False, separator=".", mmap=False)
    assert_same_array(loaded["w"], np.arange(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("function", "option"),
    [(ckptschema.loads, "checksum"), (ckptschema.dumps, "strict"), (ckptschema.manifest_of, "verify")],
)
def test_a_wrong_option_is_pythons_type_error_naming_it(function, option):
    data = ckptschema.dumps({"w": np.zeros(1, np.float32)})
    argument = data if function is ckptschema.loads else {"w": np.zeros(1, np.float32)}
    with pytest.raises(TypeError) as e:
        function(argument, **{option: None})
    assert str(e.value) == f"{function.__name__}() got an unexpected keyword argument {option!r}"


def test_dumps_and_loads_have_the_keyword_options_of_save_and_load():
    def options(function):
        return {
            name: (p.default, p.annotation)
            for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    assert options(ckptschema.dumps) == options(ckptschema.save)
    assert options(ckptschema.loads) == options(ckptschema.load)
    assert options(ckptschema.manifest_of) == {k: v for k, v in options(ckptschema.save).items() if k != "progress"}


@pytest.mark.parametrize(
    "call",
    [ckptschema.load, ckptschema.read_manifest, ckptschema.validate, ckptschema.deserialize],
    ids=lambda f: f.__name__,
)
def test_a_missing_checkpoint_is_a_file_not_found_error(tmp_path, call):
    path = tmp_path / "none.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        call(path)
    assert isinstance(e.value, ckptschema.CkptSchemaError)
    assert type(e.value) is ckptschema.CheckpointNotFoundError
    assert (str(e.value), e.value.filename) == (f"{path}: cannot open (No such file or directory)", str(path))


def test_the_resume_idiom_starts_afresh_without_a_checkpoint(tmp_path):
    try:
        state = ckptschema.load(tmp_path / "ckpt.safetensors")
    except FileNotFoundError:
        state = {"step": 0}
    assert state == {"step": 0}


def test_a_sharded_directory_without_its_index_is_a_file_not_found_error(tmp_path):
    ckptschema.save(tmp_path / "ckpt", {"w": np.ones(4, np.float32)}, max_shard_size=8)
    os.unlink(tmp_path / "ckpt" / "model.safetensors.index.json")
    with pytest.raises(FileNotFoundError) as e:
        ckptschema.read_manifest(tmp_path / "ckpt")
    assert str(e.value) == (
        f"{tmp_path / 'ckpt'}: a directory is read as a sharded checkpoint, "
        "but it has no *.safetensors.index.json index"
    )
    assert isinstance(e.value, ckptschema.CkptSchemaError)


def test_a_missing_sharded_index_file_is_a_file_not_found_error(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    with pytest.raises(ckptschema.CheckpointNotFoundError, match=r"cannot open \(No such file or directory\)$"):
        ckptschema.load(index)


def test_a_missing_shard_named_by_the_index_is_a_file_not_found_error(tmp_path):
    ckptschema.save(tmp_path / "ckpt", {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, max_shard_size=16)
    shard = sorted((tmp_path / "ckpt").glob("model-00002-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError) as e:
        ckptschema.load(tmp_path / "ckpt")
    assert str(e.value) == f"{shard}: shard cannot be opened (No such file or directory)"
    assert isinstance(e.value, ckptschema.CkptSchemaError) and e.value.filename == str(shard)


def test_the_cli_exits_2_for_a_missing_checkpoint(tmp_path, capsys):
    from ckptschema.cli import main

    assert main(["inspect", str(tmp_path / "none.safetensors")]) == 2
    assert capsys.readouterr().err.strip().endswith("none.safetensors: cannot open (No such file or directory)")
