"""The quickstart's data stage on the built-in task: problems, teacher, TFDS data, vocabulary.

    write_source (gold problems) -> simulated teacher through `teacher.extract` (the same
    parser and records as a real teacher) -> `data.prepare` (TFDS dsbs_arith) -> a vocabulary

Everything is seeded by `seed`, so the same call writes the same files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from dsbs_jax.data.vocab import EOS_ID, PAD_ID, UNK_ID, default_vocab_path


def train_bpe_vocab(
    dataset: str, data_dir: str, vocab_size: int = 600, out_path: str | None = None
) -> str:
    """A BPE sentencepiece model with T5's ids (pad 0, eos 1, unk 2, digits split) on train.

    `dsbs vocab` trains a unigram model; on the built-in task's small corpus that one stops at
    ~420 pieces and splits common words ("ha" "s"), which makes sequences ~1.6x longer. BPE
    keeps whole words, and the digits split, so the student reads numbers digit by digit.
    """
    import sentencepiece as spm

    from dsbs_jax.data.vocab import read_prepared, training_texts

    texts = list(training_texts(read_prepared(dataset, "train", data_dir)))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        split_digits=True,
        byte_fallback=True,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    out_path = out_path or default_vocab_path(dataset, data_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, out_path)
    return out_path


def make_builtin_data(
    out_dir: str,
    sizes: dict[str, int],
    seed: int = 0,
    difficulty: str = "default",
    vocab_size: int = 600,
    log: Callable[[str], None] = print,
) -> tuple[str, dict[str, float]]:
    """Writes OUT/source, OUT/teach and OUT/data; returns (data_dir, teacher accuracy by split)."""
    from dsbs_jax.builtin import arith
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.prepare import prepare
    from dsbs_jax.data.sources import read_jsonl
    from dsbs_jax.teacher.backends.base import SamplingParams
    from dsbs_jax.teacher.backends.simulated import SimulatedBackend
    from dsbs_jax.teacher.extract import extract

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
