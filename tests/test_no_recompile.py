"""The train step compiles once: fixed packed shapes, no recompilation after the first step.

Counts XLA compilations through jax's compile log (`jax_log_compiles`), for the native trainer on
the toy task and for the numpy packer's batches (variable-length examples, fixed shapes).
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
from dsbs_jax.data.features import pack_examples
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import optimizers, partitioning, trainer

CONFIG = T5Config(
    vocab_size=384,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_dim=64,
    dropout_rate=0.1,
)


class _Compiles(logging.Handler):
    """Collects the names of the functions jax compiles while installed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg.split()[1])


@pytest.fixture
def compiles():
    handler = _Compiles()
    root = logging.getLogger("jax")
    root.addHandler(handler)
    with jax.log_compiles(True):
        yield handler
    root.removeHandler(handler)


def test_trainer_step_compiles_once(tmp_path, compiles):
    trainer.train(
        model_dir=str(tmp_path),
        mixture_or_task_name="toy_reverse",
        task_feature_lengths={"inputs": 16, "targets": 12},
        train_steps=6,
        batch_size=4,
        model_config=CONFIG,
        eval_period=0,
        test_split=None,
        log_every=2,
        mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
        checkpoint_every_secs=None,
        checkpoint_period=100,
        optimizer=optimizers.make_optimizer(
            optimizers.learning_rate_schedule("constant", 1e-3), name="adamw"
        ),
    )
    steps = [n for n in compiles.names if "train_step" in n]
    assert len(steps) == 1, compiles.names


def _losses(model_dir) -> list[float]:
    import json
    import pathlib

    rows = pathlib.Path(model_dir, "train", "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["loss"] for r in rows]


def test_runs_sharing_programs_compile_once_and_match_a_fresh_run(tmp_path, compiles):
    """A sweep's runs differ in seed and data slice only: with one `programs` dict the second
    run traces and compiles nothing, and its losses equal those of a run built from scratch."""
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    tx = optimizers.make_optimizer(optimizers.learning_rate_schedule("constant", 1e-3), "adamw")

    def run(name, seed, programs, optimizer=tx):
        trainer.train(
            model_dir=str(tmp_path / name), mixture_or_task_name="toy_reverse",
            task_feature_lengths={"inputs": 16, "targets": 12}, train_steps=4, batch_size=4,
            model_config=CONFIG, random_seed=seed, eval_period=0, test_split=None, log_every=1,
            mesh=mesh, checkpoint_every_secs=None, checkpoint_period=100, optimizer=optimizer,
            programs=programs,
        )  # fmt: skip
        return _losses(tmp_path / name)

    programs: dict = {}
    run("a", 0, programs)
    before = len(compiles.names)
    shared = run("b", 1, programs)
    assert compiles.names[before:] == []  # nothing traced or compiled for the second run
    assert len(programs) == 1
    fresh_tx = optimizers.make_optimizer(
        optimizers.learning_rate_schedule("constant", 1e-3), "adamw"
    )
    fresh = run("c", 1, None, fresh_tx)
    np.testing.assert_allclose(shared, fresh, rtol=1e-6)
    assert shared != _losses(tmp_path / "a")  # the seed still acts: init and data differ


def _examples(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def seq(lo, hi):
        return np.append(rng.integers(3, 300, rng.integers(lo, hi)), 1).astype(np.int32)

    for _ in range(n):
        body = seq(3, 14)
        yield [(body, seq(1, 3), 1), (body.copy(), seq(4, 10), 2)]


def test_packed_batches_are_fixed_shape_and_exact():
    batches = list(pack_examples(_examples(40), 3, 32, 24, (0.25, 0.75), window=8))
    assert sum(b["num_examples"] for b in batches) == 40
    for b in batches:
        assert b["encoder_input_tokens"].shape == (3, 32)
        assert b["decoder_target_tokens"].shape == (3, 24)
        tgt, inp = b["decoder_target_tokens"], b["decoder_input_tokens"]
        seg, pos = b["decoder_segment_ids"], b["decoder_positions"]
        # Decoder inputs: targets shifted right within each segment, 0 at each segment start.
        starts = (pos == 0) & (seg > 0)
        assert (inp[starts] == 0).all()
        shifted = np.zeros_like(tgt)
        shifted[:, 1:] = tgt[:, :-1]
        inner = (seg > 0) & ~starts
        assert (inp[inner] == shifted[inner]).all()
        # Every decoder segment has an encoder segment with the same id in its row.
        for r in range(3):
            dec_ids = set(np.unique(seg[r])) - {0}
            assert dec_ids <= set(np.unique(b["encoder_segment_ids"][r]))
        # Weights follow the task; both tasks of each example are in the batch.
        ids = b["decoder_task_ids"]
        assert np.allclose(b["decoder_loss_weights"], np.array([0.0, 0.25, 0.75])[ids])
        assert (ids == 1).any() and (ids == 2).any()
    real = sum(int((b["encoder_input_tokens"] > 0).sum()) for b in batches)
    assert real / (len(batches) * 3 * 32) > 0.6  # the packer fills rows


def test_bench_step_compiles_once_over_packed_batches(compiles):
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    from dsbs_jax.model.t5 import Transformer
    from dsbs_jax.train import losses

    model = Transformer(CONFIG)
    one = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, one, one, one)["params"])
    tx = optax.adamw(1e-3)
    opt = tx.init(params)
    keys = (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions",
    )  # fmt: skip

    def packed_step(params, opt, step, batch):
        def loss_fn(p):
            logits = model.apply(
                {"params": p}, **{k: batch[k] for k in keys},
                rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(1), step)},
            )  # fmt: skip
            tok = losses.token_losses(logits, batch["decoder_target_tokens"])
            return losses.weighted_loss(
                tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 2
            )[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    step_fn = jax.jit(packed_step, donate_argnums=(0, 1))
    for i, b in enumerate(pack_examples(_examples(30, seed=1), 2, 32, 24, (0.5, 0.5))):
        batch = {k: b[k] for k in b if k != "num_examples"}
        params, opt, loss = step_fn(params, opt, np.int32(i), batch)
    assert i >= 4 and np.isfinite(float(loss))
    assert len([n for n in compiles.names if "packed_step" in n]) == 1, compiles.names
