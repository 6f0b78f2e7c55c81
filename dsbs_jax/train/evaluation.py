"""The one evaluator (seqio's Evaluator, greedy decoding as its `predict_fn`, task metrics on
gold) and the decoding it runs; `Evaluator` is what the trainer, `dsbs eval` and sweeps call."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax.data import text
from dsbs_jax.data.text import EOS_ID
from dsbs_jax.model import decode as decode_lib
from dsbs_jax.progress import Progress


def make_decode_fn(
    model, max_decode_length: int, beam_size: int = 1
) -> Callable[[Any, np.ndarray], np.ndarray]:
    """A jitted decoder: (params, encoder tokens [B, L]) -> tokens [B, max_decode_length];
    greedy, or the best of a beam search with `beam_size` > 1."""

    @functools.partial(jax.jit)
    def run(params, encoder_input_tokens):
        if beam_size > 1:
            tokens, _ = decode_lib.beam_search(
                model, params, encoder_input_tokens, max_decode_length, beam_size, eos_id=EOS_ID
            )
            return tokens
        return decode_lib.greedy_decode(
            model, params, encoder_input_tokens, max_decode_length, eos_id=EOS_ID
        )

    return run


def decoder(model, max_decode_length: int, cache: dict | None = None, beam_size: int = 1):
    """`make_decode_fn`, kept in `cache` (when given) for the same network and length, so runs
    alike share one compiled decoder."""
    if cache is None:
        return make_decode_fn(model, max_decode_length, beam_size)
    key = ("decode", model.config, max_decode_length, beam_size)
    if key not in cache:
        cache[key] = make_decode_fn(model, max_decode_length, beam_size)
    return cache[key]


def decode_batches(
    decode_fn: Callable,
    params: Any,
    encoder_tokens: np.ndarray,
    batch_size: int,
    trim: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Decodes all rows in fixed-size batches (the last one padded), so nothing recompiles.

    Rows keep their full length (seqio's vocabularies stop at EOS); `trim` cuts each after EOS.
    `progress(done, total)` is called after each batch (`dsbs_jax.progress.Progress`).
    """
    outputs: list[list[int]] = []
    n = len(encoder_tokens)
    for start in range(0, n, batch_size):
        chunk = encoder_tokens[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate(
                [chunk, np.zeros((batch_size - real, chunk.shape[1]), chunk.dtype)]
            )
        out = decode_fn(params, chunk)
        if not getattr(out, "is_fully_addressable", True):  # multi-host: gather every row
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        tokens = np.asarray(jax.device_get(out))[:real]
        for row in tokens:
            row = row.tolist()
            if trim and EOS_ID in row:
                row = row[: row.index(EOS_ID) + 1]
            outputs.append(row)
        if progress is not None:
            progress(len(outputs), n)
    return outputs


def decode_texts(
    decode_fn: Callable,
    params: Any,
    vocab,
    texts: list[str],
    input_length: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], int]:
    """Decoded text for each input text, and how many inputs were cut to `input_length`."""
    tokens, cut = text.encode_inputs(vocab, texts, input_length)
    rows = decode_batches(decode_fn, params, tokens, batch_size, progress=progress)
    return text.decode_rows(vocab, rows), cut


def make_predict_fn(
    decode_fn: Callable,
    get_params: Callable[[], Any],
    batch_size: int,
    new_progress: Callable[[], Callable[[int, int], None]] | None = None,
):
    """seqio's predict_fn: an enumerated dataset in, [(index, tokens)] out; `new_progress()`
    gives the progress reporter of each call (one per task of a mixture)."""

    def predict_fn(ds: tf.data.Dataset) -> list[tuple[int, list[int]]]:
        indices, rows = [], []
        for index, ex in ds.as_numpy_iterator():
            indices.append(int(index))
            rows.append(ex["encoder_input_tokens"])
        if not rows:
            return []
        progress = new_progress() if new_progress is not None else None
        tokens = decode_batches(
            decode_fn, get_params(), np.stack(rows), batch_size, False, progress
        )
        return list(zip(indices, tokens))

    return predict_fn


class SplitJSONLogger(seqio.JSONLogger):
    """seqio's JSON logger, told the split: predictions go to `<task>-<split>-<step>.jsonl` (the
    test split at the last step no longer overwrites validation's file), and every line of
    `<task>-metrics.jsonl` carries `"split"`."""

    def __init__(self, output_dir: str, split: str = "validation", **kwargs):
        super().__init__(output_dir, **kwargs)
        self.split = split

    def __call__(self, task_name, step, metrics, dataset, inferences, targets) -> None:
        if metrics:  # the metrics line, in the task's one metrics file
            split = seqio.metrics.Text(textdata=self.split)
            super().__call__(task_name, step, {"split": split, **metrics}, None, None, None)
        tag = re.sub(r"[^\w%.-]+", "_", self.split).strip("_")
        super().__call__(f"{task_name}-{tag}", step, {}, dataset, inferences, targets)


@dataclasses.dataclass
class TaskOutput:
    """What one task's evaluation decoded and scored, example by example, in the split's order."""

    ids: list[str]
    inputs: list[str]
    predictions: list[str]  # postprocessed, as the metrics saw them
    targets: list[str]


class _KeepOutputs(seqio.Logger):
    """Keeps each task's predictions, targets, ids and inputs of the last evaluation in memory."""

    def __init__(self, output_dir: str | None = None):
        super().__init__(output_dir)
        self.outputs: dict[str, TaskOutput] = {}

    def __call__(self, task_name, step, metrics, dataset, inferences, targets) -> None:
        if not inferences or "prediction" not in inferences:
            return
        ids, inputs = [], []
        for ex in dataset.as_numpy_iterator():
            ids.append(_text(ex.get("id", len(ids))))
            inputs.append(_text(ex.get("inputs_pretokenized", "")))
        self.outputs[task_name] = TaskOutput(
            ids, inputs, [_text(p) for p in inferences["prediction"]], [_text(t) for t in targets]
        )


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class Evaluation:
    """One evaluation: `{task/metric: value}` scalars and each task's outputs."""

    metrics: dict[str, float]
    outputs: dict[str, TaskOutput]


class Evaluator:
    """The one evaluator: seqio's Evaluator over the tasks (of a mixture) that have metrics, on
    one split, decoding greedily with the network. The trainer's evaluation, `dsbs eval` and a
    sweep's validation selection and test scoring all score through it, so a number in a sweep's
    table is the number `dsbs eval` gives for that checkpoint and split.

    The split's examples are read, preprocessed and tokenized once, at construction; each
    `evaluate` decodes them with the parameters it is given."""

    def __init__(
        self,
        mixture_or_task_name: str,
        split: str,
        feature_lengths: Mapping[str, int],
        log_dir: str | None = None,
        num_examples: int | None = None,
        use_cached: bool = False,
    ):
        self.split, self.lengths = split, dict(feature_lengths)
        loggers = [_KeepOutputs]
        if log_dir:
            loggers.append(functools.partial(SplitJSONLogger, split=split))
            log_dir = os.path.join(log_dir, "inference_eval")
            os.makedirs(log_dir, exist_ok=True)
        try:
            self.seqio = seqio.Evaluator(
                mixture_or_task_name,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
                eval_split=split,
                use_cached=use_cached,
                sequence_length=self.lengths,
                num_examples=num_examples,
                logger_cls=loggers,
                # seqio wants a folder for its loggers; ours keeps outputs in memory only
                log_dir=log_dir or "<in memory>",
            )
        except (AssertionError, ValueError):
            self.seqio = None
        self.tasks = [t.name for t in self.seqio.eval_tasks] if self.seqio is not None else []
        self._kept = next(
            (x for x in getattr(self.seqio, "loggers", ()) if isinstance(x, _KeepOutputs)), None
        )

    def __bool__(self) -> bool:
        """Whether any task of the mixture has metrics and this split."""
        return bool(self.tasks)

    def evaluate(
        self,
        model,
        params: Callable[[], Any] | Any,
        mesh,
        rules,
        batch_size: int,
        step: int = 0,
        cache: dict | None = None,
        say: Callable[[str], None] | None = None,
    ) -> Evaluation:
        """Decodes the split's examples (greedy, up to the targets length) and scores them;
        `say` gets a progress line every ~10 s of decoding (none for a short split)."""
        decode_fn = decoder(model, self.lengths["targets"], cache)
        batch = max(batch_size // mesh.shape["data"], 1) * mesh.shape["data"]
        get = params if callable(params) else (lambda: params)
        predict_fn = make_predict_fn(
            decode_fn, get, batch, lambda: Progress(f"decoding {self.split}", say)
        )
        with mesh, nn.logical_axis_rules(rules):
            all_metrics, _ = self.seqio.evaluate(
                compute_metrics=True, step=step, predict_fn=predict_fn
            )
        results = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
        flat = {}
        for task, values in results.items():
            for name, value in values.items():
                value = getattr(value, "value", value)
                if np.ndim(value) == 0:
                    flat[f"{task}/{name}"] = float(value)
        return Evaluation(flat, dict(self._kept.outputs) if self._kept is not None else {})
