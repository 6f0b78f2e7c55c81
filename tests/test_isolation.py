"""Runs in one process do not leak into each other: a run that names a vocabulary and data dir
leaves nothing behind for the next (the vocabulary and data dir travel as values)."""

from __future__ import annotations

import json
import os

import gin
import pytest

from dsbs_jax.experiments.builtin_data import make_builtin_data, train_bpe_vocab
from dsbs_jax.train import gin_utils, trainer


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    data_dir, _ = make_builtin_data(
        str(out), {"train": 48, "validation": 8, "test": 8}, seed=0, log=lambda s: None
    )
    other = train_bpe_vocab("arith", data_dir, vocab_size=400, out_path=str(out / "other.model"))
    return data_dir, other


def _run(model_dir, data_dir, vocabulary=None):
    config = gin_utils.scoped_config(
        ["models/micro.gin", "runs/sweep.gin"],
        [
            f"MODEL_DIR = {str(model_dir)!r}",
            "MIXTURE_OR_TASK_NAME = 'arith_distill'",
            "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}",
            "TRAIN_STEPS = 3",
            "BATCH_SIZE = 8",
            "LOG_EVERY = 1",
            f"VOCABULARY_PATH = {vocabulary!r}",
        ],
    )
    with config:
        result = trainer.train(data_dir=data_dir)
    rows = [json.loads(x) for x in open(os.path.join(model_dir, "train", "metrics.jsonl"))]
    config = open(os.path.join(model_dir, "config.gin")).read()
    return [r["loss"] for r in rows], result, config


def test_two_vocabularies_in_one_process(arith, tmp_path):
    data_dir, other = arith
    first, _, _ = _run(tmp_path / "a", data_dir)
    named, _, config_b = _run(tmp_path / "b", data_dir, vocabulary=other)
    again, _, config_c = _run(tmp_path / "c", data_dir)
    assert again == first  # as in a fresh process: nothing of run b carried over
    assert named != first  # run b really trained on its own vocabulary
    assert repr(other) in config_b and "other.model" not in config_c
    # Each run's config.gin is its whole config; none of its bindings outlive the run.
    assert "train.train_split" not in gin.config_str()
