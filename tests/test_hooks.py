"""Trainer hooks: a caller's hook sees every step and can stop the run; early stopping."""

from __future__ import annotations

import os

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import hooks, optimizers, trainer

CONFIG = T5Config(
    vocab_size=384, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
    num_decoder_layers=1, mlp_dim=32, dropout_rate=0.0,
)  # fmt: skip


class _Record(hooks.Hook):
    every = 1

    def __init__(self, stop_at: int):
        self.steps, self.stop_at, self.ended = [], stop_at, None

    def on_step(self, state):
        self.steps.append(state.step)
        if state.step == self.stop_at:
            state.stop_reason = "enough"

    def on_end(self, state):
        self.ended = (state.step, state.params is not None)


def test_a_hook_sees_each_step_and_stops_the_run(tmp_path):
    rec = _Record(stop_at=3)
    result = trainer.train(
        model_dir=str(tmp_path),
        mixture_or_task_name="toy_reverse",
        task_feature_lengths={"inputs": 24, "targets": 12},
        train_steps=10,
        batch_size=8,
        model_config=CONFIG,
        eval_period=0,
        test_split=None,
        log_every=5,
        checkpoint_period=100,
        checkpoint_every_secs=None,
        hooks=[rec],
        optimizer=optimizers.make_optimizer(optimizers.learning_rate_schedule("constant", 1e-3)),
    )
    assert rec.steps == [1, 2, 3] and rec.ended == (3, True)
    assert result.step == 3 and "loss" in result.train_metrics  # the stop step is logged
    assert os.path.isdir(tmp_path / "checkpoint_3")  # and checkpointed


def test_early_stopping_counts_evaluations_without_improvement():
    stop = hooks.EarlyStopping(metric="validation/acc", patience=2, mode="max")
    state = hooks.RunState(
        model_dir="", model=None, mesh=None, rules=None, train_steps=100, batch_size=1,
        task_names=[], step=0, params=None, opt_state=None, is_main=True,
    )  # fmt: skip
    for value in (10.0, 12.0, 11.0, 13.0, 12.0):
        stop.on_eval(state, "validation", {"validation/acc": value})
        assert state.stop_reason is None
    stop.on_eval(state, "validation", {"validation/other": 0.0})  # not its metric: ignored
    assert state.stop_reason is None
    stop.on_eval(state, "validation", {"validation/acc": 13.0})  # equal is no improvement
    assert "not improved for 2 evaluations" in state.stop_reason


def test_metrics_rows_are_strict_json_when_a_value_is_not_finite():
    """An infinite gradient norm (or NaN) is written as null: every row reads with a strict JSON
    reader, where Python's default writer would put a bare `Infinity` in the file."""
    import json

    from dsbs_jax.train.hooks import metrics_row

    def strict(name):
        raise ValueError(name)

    line = metrics_row(7, {"loss": 2.5, "grad_norm": float("inf"), "learning_rate": float("nan")})
    assert json.loads(line, parse_constant=strict) == {
        "step": 7, "loss": 2.5, "grad_norm": None, "learning_rate": None
    }  # fmt: skip
