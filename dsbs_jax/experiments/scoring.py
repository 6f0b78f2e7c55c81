"""Scoring a student on a sweep's test set, in memory at the end of its run (a trainer hook).

The direct answer is what `predict: <input>` decodes to. Rationale-then-answer decodes
`explain: <input>` and reads the answer out of the generated rationale: first with the card's
parse rule (a student that learned to write the answer marker, as a teacher does), else, where
the rationale ends in a computation (`... 4 + 1 = 5.`), the result of its last `=`. A rationale
with neither has no answer and counts as wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from clu import metric_writers

from dsbs_jax import atomic, metrics
from dsbs_jax.data import text as text_lib
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.parse import parse_output
from dsbs_jax.data.text import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.names import mixture_or_task_name
from dsbs_jax.progress import Progress
from dsbs_jax.records import OK
from dsbs_jax.train import evaluation, losses
from dsbs_jax.train.hooks import Hook, RunState

EVAL_BATCH = 64  # decoding batch: `dsbs eval`'s default (runs/eval.gin BATCH_SIZE)
_LAST_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)(?!.*=)", re.DOTALL)


def answer_from_rationale(text: str, card: TaskCard) -> str:
    """The answer a generated rationale commits to ("" if it commits to none)."""
    _, label, status = parse_output(text, card.parse)
    if status == OK:
        return label
    m = _LAST_RESULT.search(text)
    return m.group(1) if m else ""


def accuracy(predictions: Sequence[str], golds: Sequence[str], metric: str = "accuracy") -> float:
    """Percentage of predictions equal to gold under the card's metric."""
    return metrics.accuracy(list(golds), list(predictions), metric)


def rationale_accuracy(
    rationales: Sequence[str], golds: Sequence[str], card: TaskCard
) -> tuple[float, list[str]]:
    """Accuracy (%) of the answers read from generated rationales, and those answers."""
    answers = [answer_from_rationale(t, card) for t in rationales]
    return accuracy(answers, golds, card.metric), answers


def _decode(
    state: RunState,
    cache: dict,
    vocab,
    texts: list[str],
    input_length: int,
    length: int,
    progress: Progress | None = None,
):
    data = state.mesh.shape["data"]
    batch = int(math.ceil(min(len(texts), 256) / data) * data)
    fn = evaluation.decoder(state.model, length, cache)
    with state.mesh, nn.logical_axis_rules(state.rules):
        out, _ = evaluation.decode_texts(
            fn, state.params, vocab, texts, input_length, batch, progress
        )
    return out


def _evaluate(
    evaluator: evaluation.Evaluator,
    state: RunState,
    cache: dict,
    say: Callable[[str], None] | None,
) -> evaluation.Evaluation:
    """The evaluator on the run's current (or given) parameters, at the sweep's decoding batch."""
    return evaluator.evaluate(
        state.model, state.params, state.mesh, state.rules, EVAL_BATCH, state.step, cache, say=say
    )


def gold_task(card: TaskCard) -> str:
    """The task a sweep scores: `predict: <input>` against the gold label, the card's metric."""
    return mixture_or_task_name(card.name, "gold_label")


class KeepBestOnValidation(Hook):
    """Every `every` steps: the direct answers (`predict:`) to the validation examples, scored
    against gold by the evaluator; keeps a copy of the parameters with the best accuracy so far
    (the earlier step on a tie). The same selection rule for every method; `ScoreTestSet` scores
    the kept ones."""

    higher_is_better = True

    def __init__(
        self,
        evaluator: evaluation.Evaluator,
        every: int,
        cache: dict,
        say: Callable[[str], None] | None = None,
    ):
        self.evaluator, self.every, self.cache, self.say = evaluator, every, cache, say
        self.best = -math.inf if self.higher_is_better else math.inf
        self.best_step, self.params = 0, None

    def due(self, state: RunState) -> bool:
        return state.step % self.every == 0 or state.final

    def score(self, state: RunState) -> float:
        """The validation accuracy (%) of the direct answers."""
        ev = _evaluate(self.evaluator, state, self.cache, self.say)
        return ev.metrics[f"{self.evaluator.tasks[0]}/accuracy"]

    def on_step(self, state: RunState) -> None:
        value = self.score(state)
        better = value > self.best if self.higher_is_better else value < self.best
        if better:  # a copy: the next update step reuses (donates) the live buffers
            self.best, self.best_step = value, state.step
            self.params = jax.tree.map(lambda x: x.copy(), state.params)


class KeepBestOnValidationLoss(KeepBestOnValidation):
    """Every `every` steps: the cross entropy of the gold answers to the validation examples
    (`predict:` inputs, teacher-forced, mean over answer tokens and EOS); keeps a copy of the
    parameters with the lowest so far (the earlier step on a tie). One forward pass, no decoding;
    the same rule for every method."""

    higher_is_better = False

    def __init__(self, examples, vocab, lengths, every: int, cache: dict):
        super().__init__(None, every, cache)
        texts = [LABEL_PREFIX + ex["input"] for ex in examples]
        self.inputs, _ = text_lib.encode_inputs(vocab, texts, lengths["inputs"])
        golds = [ex["gold_label"] for ex in examples]
        self.targets, _ = text_lib.encode_inputs(vocab, golds, lengths["labels"])
        self.decoder_inputs = np.pad(self.targets[:, :-1], ((0, 0), (1, 0)))

    def _loss_fn(self, model):
        key = ("validation_loss", model.config, self.inputs.shape, self.targets.shape)
        if key not in self.cache:

            @jax.jit
            def loss(params, inputs, decoder_inputs, targets):
                logits = model.apply(
                    {"params": params}, inputs, decoder_inputs, targets, enable_dropout=False
                )
                tokens = losses.token_losses(logits, targets)
                real = (targets > 0).astype(tokens.dtype)
                return (tokens * real).sum() / real.sum()

            self.cache[key] = loss
        return self.cache[key]

    def score(self, state: RunState) -> float:
        """The gold answers' mean token cross entropy on validation."""
        fn = self._loss_fn(state.model)
        with state.mesh, nn.logical_axis_rules(state.rules):
            return float(fn(state.params, self.inputs, self.decoder_inputs, self.targets))


class ScoreTestSet(Hook):
    """At the end of a run: the evaluator decodes `predict:` for the test set with the run's
    final (or selected) parameters and scores it against gold, as `dsbs eval` does; with
    `explain`, `explain:` is decoded too and the answer read from each rationale is scored.
    Writes MODEL_DIR/test_predictions.jsonl and keeps the scores in `self.result`."""

    def __init__(
        self,
        evaluator: evaluation.Evaluator,
        card: TaskCard,
        vocab,
        lengths: dict[str, int],
        explain: bool,
        cache: dict,
        select: KeepBestOnValidation | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.evaluator, self.card, self.vocab, self.lengths = evaluator, card, vocab, lengths
        self.explain, self.cache, self.select, self.say = explain, cache, select, say
        self.result: dict[str, Any] = {}
        self.seconds = 0.0

    def on_end(self, state: RunState) -> None:
        t0 = time.perf_counter()
        if self.select is not None and self.select.params is not None:
            state = dataclasses.replace(state, params=self.select.params)
        ev = _evaluate(self.evaluator, state, self.cache, self.say)
        task = self.evaluator.tasks[0]
        out = ev.outputs[task]
        result: dict[str, Any] = {
            "accuracy": ev.metrics[f"{task}/accuracy"],
            "predictions": out.predictions,
            "ids": out.ids,
            "golds": out.targets,
        }
        if self.explain:
            texts = [RATIONALE_PREFIX + x.removeprefix(LABEL_PREFIX) for x in out.inputs]
            rationales = _decode(
                state, self.cache, self.vocab, texts, self.lengths["inputs"],
                self.lengths["rationales"], Progress("decoding test rationales", self.say),
            )  # fmt: skip
            acc, answers = rationale_accuracy(rationales, out.targets, self.card)
            result |= {"rationale_accuracy": acc, "rationales": rationales, "answers": answers}
        if self.select is not None:
            result |= {"selected_step": self.select.best_step}
        self.result = result
        scalars = {
            f"test/{k}": result[k] for k in ("accuracy", "rationale_accuracy") if k in result
        }
        writer = metric_writers.create_default_writer(
            os.path.join(state.model_dir, "eval"), just_logging=not state.is_main
        )
        writer.write_scalars(state.step, scalars)
        writer.close()
        if state.is_main:
            self._write(state.model_dir, result)
        self.seconds = time.perf_counter() - t0

    def _write(self, model_dir: str, result: dict[str, Any]) -> None:
        path = os.path.join(model_dir, "test_predictions.jsonl")
        with atomic.open_atomic(path) as f:
            for i, (id_, gold) in enumerate(zip(result["ids"], result["golds"])):
                row = {"id": id_, "gold": gold, "prediction": result["predictions"][i]}
                if "rationales" in result:
                    row |= {
                        "rationale": result["rationales"][i],
                        "rationale_answer": result["answers"][i],
                    }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
