"""Hooks: what the train loop does besides the update step, each a small object.

The loop (`trainer.train`) runs the step and then, in order, each hook whose period has come
(`on_step`); a hook that evaluates hands its results to every hook (`on_eval`); at the end every
hook gets `on_end`. Built in: `LogMetrics` (TensorBoard, `train/metrics.jsonl`, progress),
`SaveCheckpoints`, `Evaluate` (seqio evaluation on a split), `EarlyStopping`. A caller adds its
own, as a sweep adds its test scoring, through `train(hooks=[...])`:

    class PrintLoss(Hook):
        every = 100
        def on_step(self, state):
            print(state.step, state.train_metrics.get("loss"))
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import gin
import jax

from dsbs_jax.errors import UserError
from dsbs_jax.train import multihost


@dataclasses.dataclass
class RunState:
    """What the hooks see of a run. The loop updates `step`, `params`, `opt_state` and `aux`."""

    model_dir: str
    model: Any  # the flax network
    mesh: jax.sharding.Mesh
    rules: Any  # logical axis rules
    train_steps: int
    batch_size: int
    task_names: list[str]
    step: int
    params: Any
    opt_state: Any
    is_main: bool
    aux: Any = None  # the last step's device metrics (loss, per-task losses, grad norm)
    target_tokens: float = 0.0  # non-padding target tokens of the last step (all hosts)
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    test_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None  # set by a hook to end the run after this step
    hooks: Sequence[Hook] = ()

    @property
    def final(self) -> bool:
        return self.step >= self.train_steps or self.stop_reason is not None

    def publish_eval(self, split: str, metrics: dict[str, float]) -> None:
        """Hands an evaluation's `{split/task/metric: value}` to every hook."""
        for hook in self.hooks:
            hook.on_eval(self, split, metrics)


class Hook:
    """A train-loop callback. `every`: run `on_step` every that many steps (0: never mid-run)."""

    every: int = 0

    def due(self, state: RunState) -> bool:
        return bool(self.every) and state.step % self.every == 0

    def on_step(self, state: RunState) -> None:
        """After an update step, when `due`."""

    def on_eval(self, state: RunState, split: str, metrics: dict[str, float]) -> None:
        """After any hook evaluated on `split`."""

    def on_end(self, state: RunState) -> None:
        """After the last step (the step budget reached, or a hook stopped the run)."""


def metrics_row(step: int, metrics: dict[str, float]) -> str:
    """One line of `train/metrics.jsonl`: strict JSON, so a value that is not finite (an infinite
    gradient norm) is written as null, never as a bare `Infinity` or `NaN`."""
    row = {
        k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()
    }
    return json.dumps({"step": step, **row}, allow_nan=False)


class LogMetrics(Hook):
    """Every `every` steps: loss, per-task losses, grad norm, learning rate and throughput to
    TensorBoard (`MODEL_DIR/train`), `MODEL_DIR/train/metrics.jsonl`, and the console (a tqdm
    bar on a terminal, a line otherwise)."""

    def __init__(self, writer, every: int, metrics_path: str | None):
        self.every, self.writer = max(1, every), writer
        self.metrics_file = open(metrics_path, "a") if metrics_path else None
        self.t_last, self.steps_since, self.bar, self.start = time.time(), 0, None, None
        self.rates: list[float] = []  # steps per second of each logged window of this run

    def due(self, state: RunState) -> bool:
        self.steps_since += 1
        if self.start is None:
            self.start, self.t0 = state.step - 1, time.time()
            if sys.stderr.isatty() and state.is_main:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=state.train_steps, initial=self.start, unit="step", dynamic_ncols=True
                )
        if self.bar is not None:
            self.bar.update(1)
        return state.step % self.every == 0 or state.final

    def on_step(self, state: RunState) -> None:
        aux = jax.device_get(state.aux)
        elapsed = max(time.time() - self.t_last, 1e-9)
        m = {"loss": float(aux["loss"]), "grad_norm": float(aux["grad_norm"])}
        if "learning_rate" in aux:
            m["learning_rate"] = float(aux["learning_rate"])
        for t, name in enumerate(state.task_names, start=1):
            m[f"loss/{name}"] = float(aux[f"task_{t}/loss"])
        m["steps_per_second"] = self.steps_since / elapsed
        m["seqs_per_second"] = self.steps_since * state.batch_size / elapsed
        m["target_tokens_per_second"] = self.steps_since * state.target_tokens / elapsed
        self.rates.append(m["steps_per_second"])
        self.t_last, self.steps_since = time.time(), 0
        if not math.isfinite(m["loss"]):
            raise UserError(
                f"the loss became {m['loss']} at step {state.step}; lower the learning rate"
            )
        state.train_metrics = m
        self.writer.write_scalars(state.step, m)
        if self.metrics_file is not None:
            self.metrics_file.write(metrics_row(state.step, m) + "\n")
            self.metrics_file.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{m['loss']:.4f}")
        elif state.is_main:
            done = state.step - self.start
            rate = done / max(time.time() - self.t0, 1e-9)
            eta = (state.train_steps - state.step) / rate if rate > 0 else float("nan")
            print(
                f"step {state.step}/{state.train_steps}  loss {m['loss']:.4f}  "
                f"{rate:.2f} steps/s  eta {eta:.0f}s",
                flush=True,
            )

    def step_seconds(self) -> float | None:
        """Seconds per step after this run's first logged window (which holds the compile):
        1 / the median rate of the later windows; None with fewer than two windows."""
        rates = [r for r in self.rates[1:] if r]
        return 1.0 / statistics.median(rates) if rates else None

    def on_end(self, state: RunState) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()
        if self.metrics_file is not None:
            self.metrics_file.close()


class SaveCheckpoints(Hook):
    """Writes a checkpoint on the checkpointer's step period, its timer, and at the end."""

    def __init__(self, checkpointer, sync_every: int, random_seed: int):
        self.ckpt, self.sync_every, self.seed = checkpointer, max(1, sync_every), random_seed

    def due(self, state: RunState) -> bool:
        # Every process must agree (they all write it): see multihost.checkpoint_due.
        sync = state.step % self.sync_every == 0 or state.final
        return multihost.checkpoint_due(self.ckpt, state.step, final=state.final, sync_point=sync)

    def on_step(self, state: RunState) -> None:
        meta = {"step": state.step, "data_position": state.step, "seed": self.seed}
        self.ckpt.save(state.step, state.params, state.opt_state, meta)

    def on_end(self, state: RunState) -> None:
        self.ckpt.close()


class Evaluate(Hook):
    """Scores `split` with the tasks' seqio metrics every `every` steps and at the end (or only
    at the end: `at_end_only`, as for the test split)."""

    def __init__(
        self,
        split: str,
        every: int,
        run: Callable[[str, int], dict[str, float]],
        at_end_only: bool = False,
    ):
        self.split, self.every, self.run, self.at_end_only = split, every, run, at_end_only

    def due(self, state: RunState) -> bool:
        return (
            not self.at_end_only
            and bool(self.every)
            and (state.step % self.every == 0 or state.final)
        )

    def on_step(self, state: RunState) -> None:
        state.eval_metrics = self.run(self.split, state.step)
        state.publish_eval(self.split, state.eval_metrics)

    def on_end(self, state: RunState) -> None:
        if self.at_end_only:
            state.test_metrics = self.run(self.split, state.step)
            state.publish_eval(self.split, state.test_metrics)


@gin.configurable
class EarlyStopping(Hook):
    """Stops the run when `metric` (e.g. `validation/svamp_label/accuracy`) has not improved for
    `patience` evaluations. Bind it in gin: `train.hooks = [@EarlyStopping()]`."""

    def __init__(self, metric: str = gin.REQUIRED, patience: int = 3, mode: str = "max"):
        if mode not in ("max", "min"):
            raise UserError(f"EarlyStopping.mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.patience, self.sign = metric, patience, 1.0 if mode == "max" else -1.0
        self.best, self.waited = -math.inf, 0

    def on_eval(self, state: RunState, split: str, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            return
        value = self.sign * metrics[self.metric]
        if value > self.best:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            state.stop_reason = f"{self.metric} has not improved for {self.patience} evaluations"
