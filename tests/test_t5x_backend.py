"""The T5X backend: task-tagged mixtures and our converter as T5X builds it; with t5x installed,
the exact per-task loss and a real `t5x.train` run on a two-task mixture."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import seqio

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse and toy_copy)
import dsbs_jax.tasks  # noqa: F401  (registers svamp_dsbs)
from dsbs_jax import t5x_backend
from dsbs_jax.errors import UserError

MIX = "toy_t5x_backend_mix"
LENGTHS = {"inputs": 48, "targets": 24}
MIX_MODULE = f'''
import seqio
import dsbs_jax.data.toy
seqio.MixtureRegistry.remove("{MIX}")
seqio.MixtureRegistry.add("{MIX}", [("toy_reverse", 0.8), ("toy_copy", 0.2)])
'''


@pytest.fixture(scope="module", autouse=True)
def mixture():
    seqio.MixtureRegistry.remove(MIX)
    seqio.MixtureRegistry.add(MIX, [("toy_reverse", 0.8), ("toy_copy", 0.2)])
    yield MIX
    seqio.MixtureRegistry.remove(MIX)


def _batches(name, converter, n=3, batch=8):
    ds = seqio.get_dataset(
        name, LENGTHS, converter, dataset_split="train", shuffle=True, seed=0, num_epochs=None
    )
    return list(ds.batch(batch).take(n).as_numpy_iterator())


def test_tasks_and_weights():
    names, weights = t5x_backend.tasks_and_weights(MIX, "exact")  # seqio sorts tasks by name
    assert names == ["toy_copy", "toy_reverse"] and np.allclose(weights, [0.2, 0.8])
    assert t5x_backend.tasks_and_weights(MIX, "sampling")[1] == [1.0, 1.0]
    with pytest.raises(UserError, match="LOSS_WEIGHTING"):
        t5x_backend.tasks_and_weights(MIX, "rates")


@pytest.mark.parametrize("weighting", ["exact", "sampling"])
def test_tagged_mixture_through_our_converter(weighting):
    tagged = t5x_backend.task_tagged_mixture(MIX, weighting)
    assert tagged == f"{MIX}_t5x_{weighting}"
    # T5X constructs the converter as cls(pack=..., use_custom_packing_ops=...).
    converter = t5x_backend.TaskWeightedFeatureConverter(
        pack=True, use_custom_packing_ops=False, mixture_or_task_name=MIX, weighting=weighting
    )
    batches = _batches(tagged, converter)
    ids = np.concatenate([b["decoder_task_ids"].ravel() for b in batches])
    w = np.concatenate([b["decoder_loss_weights"].ravel() for b in batches])
    tokens = np.concatenate([b["decoder_target_tokens"].ravel() for b in batches])
    assert set(np.unique(ids)) == {0, 1, 2}
    np.testing.assert_array_equal(ids == 0, tokens == 0)  # 0 exactly on padding
    want = {1: 0.2, 2: 0.8} if weighting == "exact" else {1: 1.0, 2: 1.0}  # copy, reverse
    for t, rate in want.items():
        np.testing.assert_allclose(w[ids == t], rate, rtol=1e-6)
    assert batches[0]["decoder_segment_ids"].max() > 1  # packed
    # Each segment carries one task id, and `exact` draws the tasks equally often.
    n_copy, n_rev = (ids == 1).sum(), (ids == 2).sum()
    if weighting == "exact":
        assert 0.5 < n_copy / n_rev < 2.0
    else:
        assert n_rev > 2 * n_copy


def test_untagged_examples_get_their_own_id():
    converter = t5x_backend.TaskWeightedFeatureConverter(pack=False, mixture_or_task_name=MIX)
    (b,) = _batches("toy_copy", converter, n=1)
    real = b["decoder_target_tokens"] > 0
    assert converter.unknown_task_id == 3
    assert (b["decoder_task_ids"][real] == 3).all()
    np.testing.assert_allclose(b["decoder_loss_weights"][real], 1.0)


def test_task_vocabulary_override(tmp_path):
    vocab = t5x_backend.task_vocabulary(MIX)
    assert isinstance(vocab, seqio.ByteVocabulary)  # the toy tasks' own
    with pytest.raises(UserError, match="dsbs"):  # not a dsbs dataset: nothing to point elsewhere
        t5x_backend.task_vocabulary(MIX, str(tmp_path / "spm.model"))
    model = tmp_path / "spm.model"
    model.write_bytes(b"")  # read only when something is encoded
    named = t5x_backend.task_vocabulary("svamp_dsbs", str(model))
    assert named.sentencepiece_model_file == str(model)
    again = t5x_backend.task_vocabulary("svamp_dsbs")  # no carry-over from the call before
    assert again.sentencepiece_model_file.endswith("dsbs_svamp/spm.model")


# ----------------------------------------------------------------------------------------------
# With T5X installed from source


def _tiny_t5x_model(weighting="exact"):
    from t5x import adafactor
    from t5x.examples.t5 import network

    config = network.T5Config(
        vocab_size=512, dtype="float32", emb_dim=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, head_dim=8, mlp_dim=32, mlp_activations=("gelu", "linear"),
        dropout_rate=0.0, logits_via_embedding=False,
    )  # fmt: skip
    vocab = seqio.ByteVocabulary()
    return t5x_backend.TaskWeightedEncoderDecoderModel(
        module=network.Transformer(config),
        input_vocabulary=vocab,
        output_vocabulary=vocab,
        optimizer_def=adafactor.Adafactor(),
        z_loss=0.0,
        mixture_or_task_name=MIX,
        weighting=weighting,
        feature_converter_cls=t5x_backend.TaskWeightedFeatureConverter,
    )


def test_exact_loss_under_t5x_equals_native():
    pytest.importorskip("t5x")
    import jax
    import jax.numpy as jnp

    from dsbs_jax import weighting
    from dsbs_jax.train import losses

    tagged = t5x_backend.task_tagged_mixture(MIX, "exact")
    converter = t5x_backend.TaskWeightedFeatureConverter(pack=True, mixture_or_task_name=MIX)
    batch = {k: jnp.asarray(v) for k, v in _batches(tagged, converter, n=1)[0].items()}
    model = _tiny_t5x_model()
    shapes = {k: v.shape for k, v in batch.items()}
    params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
    loss, metrics = model.loss_fn(params, batch, None)
    logits = model._compute_logits(params, batch)
    tok = losses.token_losses(logits, batch["decoder_target_tokens"])
    want, aux = weighting.weighted_loss(
        tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 2, "exact"
    )
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    got = metrics["loss/toy_copy"].compute()
    np.testing.assert_allclose(float(got), float(aux["task_1/loss"]), rtol=1e-5)
    # T5X's own loss on the same batch: the rate-weighted token SUM (LNF None).
    plain = _tiny_t5x_model("sampling")
    t5x_loss, _ = plain.loss_fn(params, batch, None)
    np.testing.assert_allclose(
        float(t5x_loss), float((tok * batch["decoder_loss_weights"]).sum()), rtol=1e-5
    )


def _t5x_train(tmp_path, *gin_args: str) -> subprocess.CompletedProcess:
    """`python -m t5x.train` on the tiny scratch gin and the toy mixture, with `gin_args` after
    the gin file (skips where T5X is not installed from a git checkout)."""
    t5x = pytest.importorskip("t5x")
    t5x_src = pathlib.Path(t5x.__file__).resolve().parents[1]
    if not (t5x_src / "t5x" / "configs" / "runs" / "pretrain.gin").exists():
        pytest.skip("t5x is installed without its gin files (install it from a git checkout)")
    (tmp_path / "mix_module.py").write_text(MIX_MODULE)
    gin_dir = pathlib.Path(t5x_backend.__file__).resolve().parent / "gin_configs"
    repo = pathlib.Path(t5x_backend.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    cmd = [
        sys.executable, "-m", "t5x.train",
        f"--gin_search_paths={gin_dir},{t5x_src}",
        "--gin_file=t5x/dsbs_t5_1_1_tiny_scratch.gin",
        *gin_args,
        f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
        f"--gin.MIXTURE_OR_TASK_NAME='{MIX}'",
        "--gin.MIXTURE_OR_TASK_MODULE='mix_module'",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_real_t5x_train(tmp_path):
    out = _t5x_train(
        tmp_path, "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4", "--gin.CHECKPOINT_PERIOD=4"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stderr + out.stdout
    assert "loss/toy_reverse=" in log and "loss/toy_copy=" in log
    from dsbs_jax.interop import t5x as t5x_io

    params = t5x_io.load_t5x(tmp_path / "model")
    assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 2, 16)


def test_real_t5x_continues_a_parameters_only_export(tmp_path):
    """`dsbs export --format t5x` writes no optimizer state; with t5x/from_dsbs_export.gin
    (assignment_map + fallback_to_scratch) T5X continues from it."""
    pytest.importorskip("t5x")
    import flax.linen as nn
    import jax

    from dsbs_jax.interop import t5x as t5x_io
    from dsbs_jax.model.t5 import T5Config, Transformer

    config = T5Config(
        vocab_size=2048,
        emb_dim=32,
        num_heads=2,
        head_dim=16,
        num_encoder_layers=2,
        num_decoder_layers=2,
        mlp_dim=64,
        dropout_rate=0.0,
    )  # fmt: skip  (t5x/dsbs_t5_1_1_tiny_scratch.gin's network)
    x = np.ones((1, 4), np.int32)
    params = Transformer(config).init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)
    export = t5x_io.save_t5x(jax.device_get(nn.meta.unbox(params["params"])), tmp_path / "e", 4)
    out = _t5x_train(
        tmp_path,
        "--gin_file=t5x/from_dsbs_export.gin",
        f"--gin.utils.RestoreCheckpointConfig.path='{export}'",
        "--gin.utils.RestoreCheckpointConfig.mode='specific'",
        "--gin.TRAIN_STEPS=6",
        "--gin.EVAL_PERIOD=2",
        "--gin.CHECKPOINT_PERIOD=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert t5x_io.find_checkpoint(tmp_path / "model") is not None
    assert (tmp_path / "model" / "checkpoint_6").is_dir()  # the step counter continued from 4
