"""The train step compiles once: fixed packed shapes, no recompilation after the first step.

Counts XLA compilations through jax's compile log (`jax_log_compiles`), for the native trainer on
the toy task.
"""

from __future__ import annotations

import jax
import numpy as np

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
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
    assert len([k for k in programs if k[0] == "train"]) == 1  # one train program for both
    fresh_tx = optimizers.make_optimizer(
        optimizers.learning_rate_schedule("constant", 1e-3), "adamw"
    )
    fresh = run("c", 1, None, fresh_tx)
    np.testing.assert_allclose(shared, fresh, rtol=1e-6)
    assert shared != _losses(tmp_path / "a")  # the seed still acts: init and data differ
