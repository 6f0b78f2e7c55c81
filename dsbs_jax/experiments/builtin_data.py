"""The quickstart's data stage on the built-in task: problems, teacher, TFDS data, vocabulary.

    write_source (gold problems) -> simulated teacher through `teacher.extract` (the same
    parser and records as a real teacher) -> `data.prepare` (TFDS dsbs_arith) -> a vocabulary

Everything is seeded by `seed`, so the same call writes the same files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dsbs_jax.builtin import arith
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.prepare import prepare
from dsbs_jax.data.sources import read_jsonl
from dsbs_jax.data.vocab import train_vocab
from dsbs_jax.teacher.backends.base import SamplingParams
from dsbs_jax.teacher.backends.simulated import SimulatedBackend
from dsbs_jax.teacher.extract import extract


def train_bpe_vocab(
    dataset: str, data_dir: str, vocab_size: int = 600, out_path: str | None = None
) -> str:
    """A BPE sentencepiece model with T5's ids (pad 0, eos 1, unk 2, digits split) on train.

    `dsbs vocab` trains a unigram model by default; on the built-in task's small corpus that one
    stops at ~420 pieces and splits common words ("ha" "s"), which makes sequences ~1.6x longer.
    BPE keeps whole words, and the digits split, so the student reads numbers digit by digit.
    One thread: the same model on every run.
    """
    return train_vocab(dataset, data_dir, vocab_size, out_path, model_type="bpe", num_threads=1)


def make_builtin_data(
    out_dir: str,
    sizes: dict[str, int],
    seed: int = 0,
    difficulty: str = "default",
    vocab_size: int = 600,
    log: Callable[[str], None] = print,
) -> tuple[str, dict[str, float]]:
    """Writes OUT/source, OUT/teach and OUT/data; returns (data_dir, teacher accuracy by split)."""
    card = load_card("arith")
    source = os.path.join(out_dir, "source")
    teach = os.path.join(out_dir, "teach")
    data_dir = os.path.join(out_dir, "data")
    gold = arith.write_source(source, sizes, seed=seed, difficulty=difficulty)
    log(f"built-in task: {', '.join(f'{s} {n}' for s, n in sizes.items())} problems -> {source}")

    backend = SimulatedBackend(card, seed=seed)
    params = SamplingParams(stop=(card.parse.cut,) if card.parse.cut else ())
    record_files, accuracy = {}, {}
    for split, path in gold.items():
        inputs = read_jsonl(card, path, split)
        records_path = os.path.join(teach, f"arith_{split}.jsonl")
        _, stats = extract(card, inputs, backend, params, records_path, progress=False)
        record_files[split] = records_path
        accuracy[split] = stats.teacher_accuracy or 0.0
        failed = sum(v for k, v in stats.statuses.items() if k != "ok")
        log(
            f"teacher (simulated) on {split}: {accuracy[split]:.1f}% accurate, "
            f"{failed} of {stats.inputs} outputs unparseable -> {records_path}"
        )
    prepare(card, None, data_dir, record_files, log=lambda s: None)
    log(f"prepared TFDS dataset dsbs_arith under {data_dir}")
    vocab = train_bpe_vocab("arith", data_dir, vocab_size)
    log(f"vocabulary: {vocab}")
    return data_dir, accuracy
