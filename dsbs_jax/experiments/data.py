"""What a sweep measures of its prepared data: token lengths, the train size, the test set."""

from __future__ import annotations

import math
import os

import tensorflow_datasets as tfds

from dsbs_jax.data import paths
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.text import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.data.vocab import read_prepared
from dsbs_jax.errors import UserError


def _round_up(n: int, k: int) -> int:
    return int(math.ceil(n / k) * k)


def lengths_for(
    task: str, data_dir: str, vocab, card: TaskCard, sample: int = 2000
) -> dict[str, int]:
    """Token lengths that fit the data: the longest input, label and rationale (+ EOS) among the
    first `sample` train examples, rounded up to a multiple of 8 (labels: 4), capped by the card."""
    longest = {"inputs": 1, "labels": 1, "rationales": 1}
    prefix = max(LABEL_PREFIX, RATIONALE_PREFIX, key=lambda p: len(vocab.encode(p)))
    for i, ex in enumerate(read_prepared(task, "train", data_dir)):
        if i >= sample:
            break
        longest["inputs"] = max(longest["inputs"], len(vocab.encode(prefix + ex["input"])))
        for label in (ex["gold_label"], ex["teacher_label"]):
            longest["labels"] = max(longest["labels"], len(vocab.encode(label)))
        longest["rationales"] = max(longest["rationales"], len(vocab.encode(ex["rationale"])))
    cap_in = card.feature_lengths.get("inputs", 1 << 16)
    cap_out = card.feature_lengths.get("targets", 1 << 16)
    return {
        "inputs": min(_round_up(longest["inputs"] + 1, 8), cap_in),
        "labels": min(_round_up(longest["labels"] + 1, 4), cap_out),
        "rationales": min(_round_up(longest["rationales"] + 1, 8), cap_out),
    }


def train_size(task: str, data_dir: str) -> int:
    """Examples in the prepared train split (before any filtering of teacher failures)."""
    builder = tfds.builder(paths.tfds_dataset_name(task), data_dir=data_dir)
    return int(builder.info.splits["train"].num_examples)


def test_set(
    task: str, data_dir: str | os.PathLike, limit: int | None, split: str = "test"
) -> list[dict[str, str]]:
    """The first `limit` examples of a split with a gold label (the same ones for every run)."""
    out = []
    for ex in read_prepared(task, split, data_dir):
        if ex["gold_label"]:
            out.append(ex)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise UserError(f"{task}: the prepared {split} split has no examples with a gold label")
    return out
