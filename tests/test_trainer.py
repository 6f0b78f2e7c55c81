"""The native trainer on 8 fake CPU devices: meshes, loss weighting, resume, real learning."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
from dsbs_jax import weighting
from dsbs_jax.data.features import TaskWeightedEncDecFeatureConverter, add_task_ids
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import losses, optimizers, partitioning, trainer

LENGTHS = {"inputs": 24, "targets": 12}  # "reverse: " + 8 letters + EOS fits
# 4 heads and mlp 64 so that a 4-way 'model' axis divides every sharded dimension.
CONFIG = T5Config(
    vocab_size=384,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    num_encoder_layers=2,
    num_decoder_layers=2,
    mlp_dim=64,
    dropout_rate=0.0,
)


def _losses(model_dir) -> dict[int, float]:
    out = {}
    for line in pathlib.Path(model_dir, "train", "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run rewrites steps: the last one counts
    return out


def _run(model_dir, mesh, steps=5, optimizer_override=None, **kw):
    return trainer.train(
        model_dir=str(model_dir),
        mixture_or_task_name="toy_reverse",
        task_feature_lengths=LENGTHS,
        train_steps=steps,
        batch_size=8,
        model_config=CONFIG,
        eval_period=0,
        test_split=None,
        log_every=1,
        mesh=mesh,
        checkpoint_every_secs=None,
        optimizer=optimizer_override
        or optimizers.make_optimizer(
            optimizers.learning_rate_schedule("constant", 1e-3), name="adamw"
        ),
        **kw,
    )


def test_meshes_match_one_device_and_really_shard(tmp_path):
    assert jax.device_count() == 8
    result = _run(tmp_path / "one", partitioning.make_mesh(devices=jax.devices()[:1]))
    one = _losses(result.model_dir)
    assert result.step_seconds > 0  # from this run's logged windows after the first
    dp = _losses(_run(tmp_path / "dp", partitioning.make_mesh(num_partitions=1)).model_dir)
    mp = _losses(_run(tmp_path / "mp", partitioning.make_mesh(num_partitions=4)).model_dir)
    assert sorted(one) == [1, 2, 3, 4, 5]
    assert one[5] < one[1]
    for s in one:
        np.testing.assert_allclose(dp[s], one[s], rtol=1e-4)
        np.testing.assert_allclose(mp[s], one[s], rtol=1e-4)


def test_parameters_are_sharded_by_logical_rules():
    import flax.linen as nn

    mesh = partitioning.make_mesh(num_partitions=4)
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    rules = partitioning.logical_axis_rules()
    model = Transformer(CONFIG)
    x = jnp.ones((2, 8), jnp.int32)
    with mesh, nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(
            lambda r: model.init(r, x, x, x, enable_dropout=False)["params"], jax.random.PRNGKey(0)
        )
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
        params = jax.jit(
            lambda r: nn.meta.unbox(model.init(r, x, x, x, enable_dropout=False)["params"]),
            out_shardings=shardings,
        )(jax.random.PRNGKey(0))
    wi = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # ('embed', 'mlp'): mlp on 'model'
    assert wi.shape == (32, 64)
    assert {s.data.shape for s in wi.addressable_shards} == {(32, 16)}
    emb = params["token_embedder"]["embedding"]  # ('vocab', 'embed'): vocab on 'model'
    assert {s.data.shape for s in emb.addressable_shards} == {(96, 32)}
    q = params["decoder"]["layers_1"]["self_attention"]["query"]["kernel"]  # heads on 'model'
    assert {s.data.shape[1] for s in q.addressable_shards} == {1}
    fsdp = partitioning.logical_axis_rules("fsdp")
    fsdp_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, fsdp)
    assert tuple(fsdp_sharding["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec) == (
        "data",
        "model",
    )


def _two_task_batch():
    """One packed row holding a label example (task 1) and a rationale example (task 2)."""
    import tensorflow as tf

    def ds(inputs, targets, index):
        return add_task_ids(
            tf.data.Dataset.from_tensors({"inputs": inputs, "targets": targets}), index
        )

    stream = ds([5, 6, 7, 1], [8, 9, 1], 0).concatenate(ds([5, 6, 7, 1], [10, 11, 12, 13, 1], 1))
    conv = TaskWeightedEncDecFeatureConverter([1.0, 0.0], pack=True)
    row = next(conv(stream, {"inputs": 10, "targets": 10}).batch(1).as_numpy_iterator())
    assert row["decoder_task_ids"][0].tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 0, 0]
    return row


def test_exact_weighting_matches_hand_computation():
    tok = jnp.array([[1.0, 2.0, 3.0, 10.0, 20.0, 0.5]])
    task = jnp.array([[1, 1, 1, 2, 2, 0]])
    w = jnp.array([[0.8, 0.8, 0.8, 0.2, 0.2, 0.0]])
    loss, aux = weighting.weighted_loss(tok, w, task, 2, "exact")
    assert float(loss) == pytest.approx(0.8 * (1 + 2 + 3) / 3 + 0.2 * (10 + 20) / 2)
    assert float(aux["task_1/loss"]) == pytest.approx(2.0)
    assert float(aux["task_2/loss"]) == pytest.approx(15.0)
    ones = jnp.where(task > 0, 1.0, 0.0)
    sampled, _ = weighting.weighted_loss(tok, ones, task, 2, "sampling")
    assert float(sampled) == pytest.approx((1 + 2 + 3 + 10 + 20) / 5)


def test_alpha_one_gives_rationale_zero_gradient():
    row = _two_task_batch()
    model = Transformer(CONFIG)
    keys = (
        "encoder_input_tokens",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "encoder_segment_ids",
        "decoder_segment_ids",
        "encoder_positions",
        "decoder_positions",
    )
    inputs = {k: jnp.asarray(row[k]) for k in keys}
    params = model.init(jax.random.PRNGKey(0), **inputs, enable_dropout=False)["params"]
    params = jax.tree.map(
        lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value")
    )

    def loss(p, weights, task_ids):
        logits = model.apply({"params": p}, **inputs, enable_dropout=False)
        tok = losses.token_losses(logits, inputs["decoder_target_tokens"])
        return weighting.weighted_loss(tok, weights, task_ids, 2, "exact")[0]

    grad = jax.jit(jax.grad(loss))  # one compile for the four gradients below
    w, t = jnp.asarray(row["decoder_loss_weights"]), jnp.asarray(row["decoder_task_ids"])
    g_both = grad(params, w, t)
    label_only = jnp.where(t == 1, t, 0)
    g_label = grad(params, jnp.where(t == 1, w, 0.0), label_only)
    for a, b in zip(jax.tree.leaves(g_both), jax.tree.leaves(g_label)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    # The rationale task alone (alpha = 1: weight 0) gives exactly zero gradient ...
    g_rat = grad(params, jnp.where(t == 2, w, 0.0), jnp.where(t == 2, t, 0))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_rat)) == 0.0
    # ... and with alpha = 0.5 it does not.
    half = jnp.where(t > 0, 0.5, 0.0)
    g_half = grad(params, jnp.where(t == 2, half, 0.0), jnp.where(t == 2, t, 0))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_half)) > 0.0


def _train_cmd(model_dir, steps, checkpoint_period=20):
    return [
        sys.executable,
        "-m",
        "dsbs_jax.cli",
        "train",
        "--gin_file=models/t5_1_1_tiny.gin",
        "--gin_file=runs/finetune.gin",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.MIXTURE_OR_TASK_NAME=toy_reverse",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.VOCAB_SIZE=0",
        "--gin.BATCH_SIZE=8",
        "--gin.EVAL_PERIOD=0",
        "--gin.train.test_split=None",
        "--gin.train.log_every=1",
        f"--gin.train.checkpoint_period={checkpoint_period}",
        "--gin.DROPOUT_RATE=0.1",
    ]


def test_killed_run_resumes_with_identical_losses(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full, 40), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(killed, 40), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = killed / "checkpoint_20" / "commit_success.txt"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote checkpoint_20"
    assert not (killed / "checkpoint_40").exists()
    resumed = subprocess.run(_train_cmd(killed, 40), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resume line is printed at the default log level, as T5X users expect.
    assert f"resumed from {killed}/checkpoint_20 (data position 20)" in resumed.stdout
    a, b = _losses(full), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    np.testing.assert_allclose(
        [b[s] for s in range(21, 41)], [a[s] for s in range(21, 41)], rtol=1e-5
    )
    assert (killed / "checkpoint_40").exists()
    # Each step once in metrics.jsonl: the steps replayed after the kill replaced their rows.
    assert _metric_steps(killed) == list(range(1, 41))


def _metric_steps(model_dir) -> list[int]:
    rows = pathlib.Path(model_dir, "train", "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["step"] for r in rows]


def test_damaged_latest_checkpoint_resumes_from_the_one_before(tmp_path, capsys):
    """A truncated array file under a commit marker: export names it in one line; the run sets
    it aside (kept), says so, resumes from the one before, and ends with the losses of an
    undamaged run. (The runs and the export are processes of their own: in one process,
    TensorStore's cache could serve the damaged file's old bytes; CI once saw the in-process
    export succeed.)"""
    import gin

    from dsbs_jax import cli

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = tmp_path / "run"
    subprocess.run(_train_cmd(run, 8, 4), check=True, env=env, capture_output=True)
    undamaged = _losses(run)
    config_before = (run / "config.gin").read_text()
    # Every array data file of checkpoint_8 (per-process and merged OCDBT folders alike).
    truncated = []
    for f in sorted((run / "checkpoint_8").glob("*/**/d/*")):
        truncated.append(f"{f.relative_to(run)} {f.stat().st_size}")
        os.truncate(f, f.stat().st_size // 2)
    # The export reads `params` alone: its arrays must be among the damaged files.
    assert any(t.startswith("checkpoint_8/params/") for t in truncated), sorted(
        str(p.relative_to(run)) for p in run.rglob("*")
    )
    assert (run / "checkpoint_8" / "commit_success.txt").exists()

    out_dir = tmp_path / "export"
    export = [sys.executable, "-m", "dsbs_jax.cli", "export", "--checkpoint", str(run)]
    done = subprocess.run([*export, "--out", str(out_dir)], env=env, capture_output=True, text=True)
    err = [line for line in done.stderr.strip().splitlines() if line.startswith("dsbs export:")]
    assert done.returncode == 2 and len(err) == 1, (done.returncode, done.stderr[-3000:], truncated)
    assert f"{run}/checkpoint_8 is damaged" in err[0] and f"readable: {run}/checkpoint_4" in err[0]
    assert not out_dir.exists()

    resumed = subprocess.run(_train_cmd(run, 8, 4), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = resumed.stdout
    assert "checkpoint_8 is damaged" in out and "resuming from checkpoint_4" in out, out
    assert f"resumed from {run}/checkpoint_4 (data position 4)" in out
    assert (run / "damaged_checkpoint_8" / "params").is_dir()
    assert (run / "checkpoint_8" / "params").is_dir()
    resumed_losses = _losses(run)
    assert _metric_steps(run) == list(range(1, 9))
    assert [resumed_losses[s] for s in range(5, 9)] == [undamaged[s] for s in range(5, 9)]
    assert (run / "config.gin").read_text() == config_before

    # Fewer steps than already trained: one line, and the record of the run stays as it was.
    gin.clear_config()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc = cli.main(_train_cmd(run, 4, 4)[3:])
    err = capsys.readouterr().err.strip().splitlines()
    gin.clear_config()
    assert rc == 2 and len(err) == 1, err
    assert "already trained to step 8, past TRAIN_STEPS=4" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_tiny_model_learns_to_reverse_strings(tmp_path):
    config = T5Config(
        vocab_size=384,
        emb_dim=64,
        num_heads=4,
        head_dim=16,
        num_encoder_layers=2,
        num_decoder_layers=2,
        mlp_dim=128,
        dropout_rate=0.0,
    )
    schedule = optimizers.learning_rate_schedule("cosine", 3e-3, warmup_steps=50, total_steps=600)
    result = trainer.train(
        model_dir=str(tmp_path),
        mixture_or_task_name="toy_reverse",
        task_feature_lengths=LENGTHS,
        train_steps=600,
        batch_size=64,
        model_config=config,
        eval_period=600,
        test_split=None,
        log_every=100,
        checkpoint_every_secs=None,
        optimizer=optimizers.make_optimizer(schedule, name="adamw"),
        mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
    )
    assert result.eval_metrics["validation/toy_reverse/accuracy"] > 90.0


def test_a_nan_stop_waits_for_the_save_in_flight_and_the_rerun_resumes_from_it(tmp_path, capsys):
    """The 5th update uses a NaN learning rate: step 6's loss is NaN and the run stops with one
    line while step 4's checkpoint may still be saving; that save is complete when `train`
    returns, and a rerun resumes from it."""
    from dsbs_jax.errors import UserError
    from dsbs_jax.train import checkpoints

    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    nan_from_5th = optimizers.make_optimizer(
        lambda step: jnp.where(step < 4, 1e-3, jnp.nan), name="adamw"
    )
    with pytest.raises(UserError, match="the loss became nan at step 6"):
        _run(tmp_path, mesh, steps=10, optimizer_override=nan_from_5th, checkpoint_period=2)
    assert checkpoints.checkpoint_steps(str(tmp_path)) == [4, 2]  # complete, none half-written
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
    _run(tmp_path, mesh, steps=6, checkpoint_period=2)
    assert f"resumed from {tmp_path}/checkpoint_4" in capsys.readouterr().out
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]
