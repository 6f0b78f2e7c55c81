"""Evaluation with seqio's Evaluator: greedy decoding as its `predict_fn`, task metrics on gold."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax.data import text
from dsbs_jax.data.text import EOS_ID
from dsbs_jax.model import decode as decode_lib


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
) -> list[list[int]]:
    """Decodes all rows in fixed-size batches (the last one padded), so nothing recompiles.

    Rows keep their full length (seqio's vocabularies stop at EOS); `trim` cuts each after EOS.
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
    return outputs


def decode_texts(
    decode_fn: Callable, params: Any, vocab, texts: list[str], input_length: int, batch_size: int
) -> tuple[list[str], int]:
    """Decoded text for each input text, and how many inputs were cut to `input_length`."""
    tokens, cut = text.encode_inputs(vocab, texts, input_length)
    rows = decode_batches(decode_fn, params, tokens, batch_size)
    return text.decode_rows(vocab, rows), cut


def make_predict_fn(decode_fn: Callable, get_params: Callable[[], Any], batch_size: int):
    """seqio's predict_fn: an enumerated dataset in, [(index, tokens)] out."""

    def predict_fn(ds: tf.data.Dataset) -> list[tuple[int, list[int]]]:
        indices, rows = [], []
        for index, ex in ds.as_numpy_iterator():
            indices.append(int(index))
            rows.append(ex["encoder_input_tokens"])
        if not rows:
            return []
        tokens = decode_batches(decode_fn, get_params(), np.stack(rows), batch_size)
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


def make_evaluator(
    mixture_or_task_name: str,
    split: str,
    feature_lengths: Mapping[str, int],
    log_dir: str | None,
    num_examples: int | None = None,
    use_cached: bool = False,
) -> seqio.Evaluator | None:
    """seqio's Evaluator over the tasks of the mixture that have metrics (None if none do)."""
    loggers = (functools.partial(SplitJSONLogger, split=split),) if log_dir else ()
    if log_dir:
        os.makedirs(os.path.join(log_dir, "inference_eval"), exist_ok=True)
    try:
        evaluator = seqio.Evaluator(
            mixture_or_task_name,
            feature_converter=seqio.EncDecFeatureConverter(pack=False),
            eval_split=split,
            use_cached=use_cached,
            sequence_length=dict(feature_lengths),
            num_examples=num_examples,
            logger_cls=loggers,
            log_dir=os.path.join(log_dir, "inference_eval") if log_dir else None,
        )
    except (AssertionError, ValueError):
        return None
    return evaluator if evaluator.eval_tasks else None


def run_evaluation(evaluator: seqio.Evaluator, predict_fn, step: int) -> dict[str, float]:
    """Runs the evaluator; returns flat `{task/metric: value}` scalars."""
    all_metrics, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn)
    metrics = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
    flat = {}
    for task, values in metrics.items():
        for name, value in values.items():
            value = getattr(value, "value", value)
            if np.ndim(value) == 0:
                flat[f"{task}/{name}"] = float(value)
    return flat
