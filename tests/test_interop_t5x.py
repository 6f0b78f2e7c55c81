"""T5X checkpoints in both layouts (msgpack + tensorstore, orbax) import to identical arrays."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization
from random_params import random_params

from dsbs_jax import interop
from dsbs_jax.errors import UserError
from dsbs_jax.interop import t5x
from dsbs_jax.model import attention_layout
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import checkpoints, partitioning

CONFIG = T5Config(
    vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, num_encoder_layers=2,
    num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def params():
    return random_params(CONFIG)


def _adafactor_states(params):
    """Per-parameter optimizer slots shaped like T5X's Adafactor (v_row/v_col or v)."""

    def slots(x):
        if x.ndim >= 2:
            return {"v_row": np.ones(x.shape[:-1], np.float32), "v_col": np.ones(x.shape[-1:])}
        return {"v": np.full(x.shape, 0.5, np.float32)}

    return jax.tree.map(slots, params)


def _abstract(mesh):
    model = Transformer(CONFIG)
    rules = partitioning.logical_axis_rules()
    enc = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda r: model.init({"params": r}, enc, enc, enc, enable_dropout=False)["params"],
        jax.random.PRNGKey(0),
    )
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    return checkpoints.abstract_with_shardings(nn.meta.unbox(boxed), shardings)


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_msgpack_layout_as_t5x_writes_it(tmp_path, params):
    ckpt = t5x.write_msgpack_checkpoint(tmp_path, 1000, params, _adafactor_states(params))
    assert os.path.basename(ckpt) == "checkpoint_1000"
    with open(os.path.join(ckpt, "checkpoint"), "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    # {'version', 'optimizer': {'target', 'state'}}; arrays are tensorstore specs by path.
    assert set(raw) == {"version", "optimizer"} and raw["version"] == 3
    assert set(raw["optimizer"]) == {"target", "state"}
    assert int(raw["optimizer"]["state"]["step"]) == 1000
    spec = raw["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert spec["driver"] == "zarr" and spec["metadata"]["compressor"]["id"] == "gzip"
    assert spec["kvstore"]["path"].rstrip("/") == "target.encoder.layers_0.attention.query.kernel"
    arr_dir = os.path.join(ckpt, "target.encoder.layers_0.attention.query.kernel")
    assert os.path.isfile(os.path.join(arr_dir, ".zarray"))
    # The zarr arrays hold the values, attention kernels in T5X's 2-D [embed, heads * head_dim]
    # (DenseGeneral's `joined_kv`) form: read one with tensorstore alone.
    stored = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": arr_dir}}).result()
    ours = params["encoder"]["layers_0"]["attention"]["query"]["kernel"]  # [32, 4, 8]
    assert stored.shape == (32, 32) and spec["metadata"]["shape"] == [32, 32]
    np.testing.assert_array_equal(stored.read().result(), ours.reshape(32, 32))
    out_spec = raw["optimizer"]["target"]["decoder"]["layers_1"]["self_attention"]["out"]["kernel"]
    assert out_spec["metadata"]["shape"] == [32, 32]
    # MODEL_DIR, the step folder and the msgpack file itself all import to the same arrays.
    for path in (tmp_path, ckpt, os.path.join(ckpt, "checkpoint")):
        _assert_same(t5x.load_t5x(path), params)
    opt = t5x.read_msgpack_state(os.path.join(ckpt, "checkpoint"), "state")
    assert opt["param_states"]["decoder"]["decoder_norm"]["scale"]["v"][0] == 0.5


def test_msgpack_older_specs_and_inline_arrays(tmp_path, params):
    """Older T5X files: spec `path` beside a `gcs` kvstore, and small arrays stored inline."""
    ckpt = t5x.write_msgpack_checkpoint(tmp_path, 5, params)
    file = os.path.join(ckpt, "checkpoint")
    with open(file, "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    target = raw["optimizer"]["target"]
    q = target["encoder"]["layers_0"]["attention"]["query"]
    rel = q["kernel"]["kvstore"]["path"]
    q["kernel"] = {
        "driver": "zarr",
        "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"},
        "path": rel,
        "metadata": q["kernel"]["metadata"],
    }
    target["encoder"]["encoder_norm"]["scale"] = params["encoder"]["encoder_norm"]["scale"]
    k = params["decoder"]["layers_0"]["encoder_decoder_attention"]["key"]["kernel"]
    target["decoder"]["layers_0"]["encoder_decoder_attention"]["key"]["kernel"] = k.reshape(32, 32)
    with open(file, "wb") as f:
        f.write(serialization.msgpack_serialize(raw))
    _assert_same(t5x.load_t5x(tmp_path), params)


def test_orbax_layout(tmp_path, params):
    ckpt = t5x.write_orbax_checkpoint(tmp_path, 20, params, _adafactor_states(params))
    assert os.path.isdir(os.path.join(ckpt, "state"))
    assert {"_METADATA", "manifest.ocdbt"} <= set(os.listdir(os.path.join(ckpt, "state")))
    assert t5x.find_checkpoint(tmp_path) == ("orbax", os.path.join(ckpt, "state"))
    _assert_same(t5x.load_t5x(tmp_path), params)
    _assert_same(t5x.load_t5x(ckpt), params)
    whole = t5x.read_orbax_state(os.path.join(ckpt, "state"), subtree=None)
    assert int(whole["state"]["step"]) == 20


def test_latest_and_chosen_step(tmp_path, params):
    later = jax.tree.map(lambda x: x + 1, params)
    t5x.write_msgpack_checkpoint(tmp_path, 10, params)
    t5x.write_msgpack_checkpoint(tmp_path, 30, later)
    _assert_same(t5x.load_t5x(tmp_path), later)
    _assert_same(t5x.load_t5x(tmp_path, step=10), params)


@pytest.mark.parametrize("layout", ["msgpack", "orbax"])
def test_initial_checkpoint_path_takes_t5x(tmp_path, params, layout):
    t5x.save_t5x(params, tmp_path, 3, layout=layout)
    mesh = partitioning.make_mesh(num_partitions=2)
    loaded = checkpoints.load_params(str(tmp_path), _abstract(mesh))
    kernel = loaded["decoder"]["layers_1"]["mlp"]["wi_0"]["kernel"]
    assert kernel.sharding.mesh.shape == mesh.shape and not kernel.sharding.is_fully_replicated
    _assert_same(loaded, params)


def test_not_a_checkpoint(tmp_path, params):
    (tmp_path / "checkpoint").write_text("model_checkpoint_path: 'model.ckpt-0'\n")
    assert interop.detect(tmp_path) is None
    assert interop.load_any(str(tmp_path), params) is None
    with pytest.raises(UserError, match="not a dsbs-jax, T5X or Hugging Face checkpoint"):
        checkpoints.load_params(str(tmp_path), _abstract(partitioning.make_mesh()))


def test_attention_layout_is_one_rule_both_ways():
    for proj, ours, t5x_shape in (("query", (8, 2, 4), (8, 8)), ("out", (2, 4, 8), (8, 8))):
        assert attention_layout.joined_shape(proj, ours) == t5x_shape
        assert attention_layout.split_shape(proj, t5x_shape, heads=2) == ours
        kernel = np.arange(64).reshape(ours)
        assert (t5x._from_joined(t5x._to_joined(kernel, 2, proj), 2, proj) == kernel).all()
    assert attention_layout.joined_shape("wi", (8, 2, 4)) == (8, 2, 4)  # not an attention kernel
    assert attention_layout.joined_spec("key", ("data", None, "model")) == ("data", "model")
    assert attention_layout.joined_spec("out", ("model", None)) == ("model", None)
