"""`dsbs sweep`: every method at every training-set size and seed, same model and budget.

A thin driver over the trainer:

    for each planned run (method, fraction, seed), skipping runs already in OUT/results.jsonl:
        gin = models/<model>.gin + runs/sweep.gin + the run's bindings (MODEL_DIR, mixture,
              TRAIN_SPLIT = train[:N], steps, batch, seed, lengths, optimizer)
        trainer.train(hooks=[ScoreTestSet]): trains, then scores the test set in memory
        append the run's line to OUT/results.jsonl
    (`dsbs_jax.report` then writes OUT/report.md, OUT/table.md and OUT/accuracy.png)

Each run's MODEL_DIR/config.gin is its complete config. Runs alike (same model, steps and
shapes) share the trainer's jitted programs and decoders through one cache, so they compile
once per sweep. What the methods are and what the budget means: `experiments.config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax

from dsbs_jax import atomic, metrics
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.cards import load_card
from dsbs_jax.errors import UserError
from dsbs_jax.experiments import data as data_lib
from dsbs_jax.experiments import scoring
from dsbs_jax.experiments.config import Plan, SweepConfig, plan_runs
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.names import mixture_or_task_name
from dsbs_jax.report import results as results_lib
from dsbs_jax.report.results import SWEEP_FILE
from dsbs_jax.train import evaluation, gin_utils, trainer

RUN_GIN = "runs/sweep.gin"


class CompileTimer:
    """Sums JAX's trace, lowering and XLA-compile durations (jax.monitoring events) while open."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def _on_event(self, event: str, duration: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            key = event.rsplit("/", 1)[-1].replace("_duration", "")
            self.seconds[key] = self.seconds.get(key, 0.0) + duration

    def __enter__(self) -> CompileTimer:
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


class Sweep:
    """Plans, runs (resumably) and records one sweep. `setup()` first, then `run_plans`."""

    def __init__(self, config: SweepConfig, log: Callable[[str], None] = print):
        self.cfg = config
        self.log = log
        self.out = os.path.abspath(config.out)
        self.cache: dict = {}  # jitted programs, decoders and optimizers shared by runs alike
        os.makedirs(self.out, exist_ok=True)

    # ---- set-up
    def setup(self) -> None:
        """Registers the task's data, measures lengths and the train set, loads the test set,
        and writes (or, resuming, checks) OUT/sweep.json."""
        cfg = self.cfg
        self.card = load_card(cfg.task)
        self.model_gin = gin_utils.model_gin(cfg.model)
        tasks_lib.register_card_tasks(self.card, cfg.data_dir, cfg.vocabulary)
        self.dsbs_mixture = tasks_lib.register_dsbs_mixture(self.card.name, cfg.alpha)
        self.vocab = vocab_lib.get_vocabulary(mixture_or_task_name(self.card.name, "label"))
        self.lengths = cfg.lengths or data_lib.lengths_for(
            self.card.name, cfg.data_dir, self.vocab, self.card
        )
        cfg.lengths = dict(self.lengths)
        self.total = data_lib.train_size(self.card.name, cfg.data_dir)
        self.test = data_lib.test_set(
            self.card.name, cfg.data_dir, cfg.test_examples, cfg.score_split
        )
        # Test (and validation) scores come from the one evaluator `dsbs eval` uses, on the gold
        # task, so a table's number is what `dsbs eval` gives for the run's checkpoint.
        gold = scoring.gold_task(self.card)
        eval_lengths = {"inputs": self.lengths["inputs"], "targets": self.lengths["labels"]}
        self.test_evaluator = evaluation.Evaluator(
            gold, cfg.score_split, eval_lengths, None, len(self.test)
        )
        self.validation = []
        if cfg.select == "best_validation":
            self.validation_evaluator = evaluation.Evaluator(
                gold, "validation", eval_lengths, None, cfg.validation_examples
            )
        elif cfg.select == "best_validation_loss":
            self.validation = data_lib.test_set(
                self.card.name, cfg.data_dir, cfg.validation_examples, "validation"
            )
        self._write_info()

    def _write_info(self) -> None:
        path = os.path.join(self.out, SWEEP_FILE)
        core = self.cfg.core()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f).get("core", {})
            diff = [k for k in core if old.get(k) != core[k]]
            if diff:
                k = diff[0]
                raise UserError(
                    f"{path}: this folder holds a sweep with other settings ({k}: {old.get(k)!r}, "
                    f"now {core[k]!r}); use another --out, or the same settings to resume"
                )
        self.teacher_accuracy = metrics.score_teacher(
            ((ex["teacher_label"] or None, ex["gold_label"] or None) for ex in self.test),
            self.card.metric,
        ).accuracy
        info = {
            "core": core,
            "methods": list(self.cfg.methods),
            "fractions": list(self.cfg.fractions),
            "seeds": self.cfg.seeds,
            "train_size": self.total,
            "test_examples": len(self.test),
            "teacher_test_accuracy": self.teacher_accuracy,
            "model_gin": self.model_gin,
            "model_config": dataclasses.asdict(self.model_config()),
        }
        with atomic.open_atomic(path) as f:  # workers write it too (a name of their own each)
            json.dump(info, f, indent=1, sort_keys=True)

    def model_config(self) -> T5Config:
        """The student's hyperparameters, as its model gin sets them."""
        with gin_utils.scoped_config([self.model_gin], []):
            return T5Config()

    def plans(self) -> list[Plan]:
        """Every run of the sweep, in the order they run."""
        return plan_runs(self.cfg, self.card.name, self.dsbs_mixture, self.total, self.lengths)

    def todo(self, plans: list[Plan]) -> list[Plan]:
        """The planned runs not yet in the results file."""
        done = {r.key for r in results_lib.read_results(self.out)}
        return [p for p in plans if results_lib.run_key(p.method, p.fraction, p.seed) not in done]

    # ---- one run
    def bindings(self, plan: Plan, model_dir: str) -> list[str]:
        """The run's gin bindings on top of the model gin and runs/sweep.gin."""
        cfg = self.cfg
        values = {
            "MODEL_DIR": model_dir,
            "MIXTURE_OR_TASK_NAME": plan.mixture,
            "TASK_FEATURE_LENGTHS": {"inputs": plan.input_length, "targets": plan.target_length},
            "TRAIN_STEPS": plan.steps,
            "BATCH_SIZE": plan.rows,
            "RANDOM_SEED": plan.seed,
            "TRAIN_SPLIT": f"train[:{plan.train_examples}]",
            "PACK": plan.pack,
            "LEARNING_RATE": cfg.learning_rate,
            "WARMUP_STEPS": min(cfg.warmup_steps, plan.steps - 1),
            "WEIGHT_DECAY": cfg.weight_decay,
            "LOG_EVERY": max(1, plan.steps // 5),
            "INITIAL_CHECKPOINT_PATH": cfg.initial_checkpoint,
            "VOCABULARY_PATH": cfg.vocabulary,
        }
        return [f"{k} = {v!r}" for k, v in values.items()]

    def run_one(self, plan: Plan) -> results_lib.RunResult:
        """Trains and scores one run; its MODEL_DIR starts empty."""
        model_dir = os.path.join(self.out, "runs", *plan.model_dir_parts)
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)  # an unfinished run: start it again from scratch
        os.makedirs(model_dir)
        name = f"{plan.method} {plan.train_examples} ex seed {plan.seed}"

        def say(line: str) -> None:  # progress of a long decode, on the sweep's log
            self.log(f"{name}: {line}")

        select = None
        if self.cfg.select == "best_validation":
            select = scoring.KeepBestOnValidation(
                self.validation_evaluator, self.cfg.select_every, self.cache, say
            )
        elif self.cfg.select == "best_validation_loss":
            select = scoring.KeepBestOnValidationLoss(
                self.validation, self.vocab, self.lengths, self.cfg.select_every, self.cache
            )
        score = scoring.ScoreTestSet(
            self.test_evaluator,
            self.card,
            self.vocab,
            self.lengths,
            explain=self.cfg.score_rationale and plan.method == "dsbs",
            cache=self.cache,
            select=select,
            say=say,
        )
        config = gin_utils.scoped_config([self.model_gin, RUN_GIN], self.bindings(plan, model_dir))
        with config, CompileTimer() as timer:
            t0 = time.perf_counter()
            with (
                open(os.path.join(model_dir, "train.log"), "w") as log_file,
                contextlib.redirect_stdout(log_file),
            ):
                hooks = [score] if select is None else [select, score]
                result = trainer.train(data_dir=self.cfg.data_dir, hooks=hooks, programs=self.cache)
            seconds = time.perf_counter() - t0
            compile_s = sum(timer.take().values())
        per_step = result.step_seconds
        steps_s = per_step * plan.steps if per_step else None
        timing = {  # seconds: training (of which steps, and compiling), then test scoring
            "train": round(seconds - score.seconds, 3),
            "train_steps": round(steps_s, 3) if steps_s else None,
            "compile": round(compile_s, 3),
            "scoring": round(score.seconds, 3),
        }
        ev = score.result
        return results_lib.RunResult(
            method=plan.method,
            fraction=plan.fraction,
            seed=plan.seed,
            train_examples=plan.train_examples,
            steps=result.step,
            accuracy=round(ev["accuracy"], 4),
            rationale_accuracy=(
                round(ev["rationale_accuracy"], 4) if "rationale_accuracy" in ev else None
            ),
            test_examples=len(self.test),
            seconds=round(seconds, 3),
            timing={k: v for k, v in timing.items() if v is not None},
            model_dir=os.path.relpath(model_dir, self.out),
            selected_step=ev.get("selected_step"),
        )

    # ---- many runs
    def run_plans(
        self, todo: list[Plan], total: int, claim: Callable[[Plan], bool] | None = None
    ) -> None:
        """Runs `todo` in order (skipping those `claim` refuses), appending each result; the log
        counts finished runs out of `total`."""
        t0 = time.perf_counter()
        for plan in todo:
            if claim is not None and not claim(plan):
                continue
            r = self.run_one(plan)
            results_lib.append_result(self.out, r)
            done = len(results_lib.read_results(self.out))
            extra = (
                f", rationale->answer {r.rationale_accuracy:.1f}%"
                if r.rationale_accuracy is not None
                else ""
            )
            self.log(
                f"[{done}/{total}] {plan.method} {plan.train_examples} ex seed {plan.seed}: "
                f"accuracy {r.accuracy:.1f}%{extra} ({r.seconds:.1f} s, of which compile "
                f"{r.timing['compile']:.1f}; elapsed {time.perf_counter() - t0:.0f} s)"
            )


def describe(sweep: Sweep, plans: list[Plan], todo: list[Plan]) -> str:
    """The sweep's opening log line."""
    cfg = sweep.cfg
    return (
        f"sweep {cfg.task}: {len(plans)} runs ({len(plans) - len(todo)} already done), "
        f"model {sweep.model_gin}, lengths {sweep.lengths}, train set {sweep.total}, "
        f"test {len(sweep.test)} examples"
        + (f", {cfg.workers} worker processes" if cfg.workers > 1 else "")
    )


def config_dict(config: SweepConfig) -> dict[str, Any]:
    """The config as JSON-ready values (what workers are started with)."""
    return dataclasses.asdict(config)
