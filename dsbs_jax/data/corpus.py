"""A pretraining corpus from prepared datasets: the text of their train splits, never the text
of validation or test.

`build_corpus` writes, from each dataset's prepared `train` split (after `dsbs prepare` carved
validation off it):
- `inputs.jsonl`: one `{"text": input}` line per train example (what every method reads);
- `rationales.jsonl`: one `{"text": rationale}` line per parsed teacher rationale (kept apart:
  pretraining on them shows the teacher's reasoning to every method, fine-tuning included);
- `spm.model` (optional): a sentencepiece vocabulary trained on both files' text and on the
  datasets' train labels, shared by the datasets, so one pretrained checkpoint serves them all.
Each file's size in tokens of that vocabulary is returned (and printed by `dsbs corpus`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from dsbs_jax import atomic
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.text import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.errors import UserError

INPUTS_FILE, RATIONALES_FILE, VOCAB_FILE = "inputs.jsonl", "rationales.jsonl", "spm.model"


@dataclasses.dataclass
class Corpus:
    """Where a corpus was written and how large it is."""

    inputs: str
    rationales: str
    vocabulary: str | None
    documents: dict[str, int]  # file -> lines
    tokens: dict[str, int]  # file -> tokens of the vocabulary (empty without one)


def _write_jsonl(path: str, texts: Sequence[str]) -> None:
    with atomic.open_atomic(path) as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


def build_corpus(
    tasks: Sequence[str],
    data_dir: str | None,
    out_dir: str,
    vocab_size: int | None = 8000,
    num_threads: int | None = None,
) -> Corpus:
    """Writes the train text of `tasks` (prepared under `data_dir`) to `out_dir`, and a
    vocabulary of `vocab_size` pieces trained on it (None: none)."""
    if not tasks:
        raise UserError("no dataset named: e.g. dsbs corpus esnli cqa --data_dir DIR --out DIR")
    inputs, rationales, labels = [], [], []
    for task in tasks:
        for ex in vocab_lib.read_prepared(task, "train", data_dir):
            inputs.append(ex["input"])
            if ex["status"] == "ok" and ex["rationale"]:
                rationales.append(ex["rationale"])
            labels += [x for x in (ex["gold_label"], ex["teacher_label"]) if x]
    if not inputs:
        raise UserError(f"{', '.join(tasks)}: the prepared train splits are empty")
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "inputs": os.path.join(out_dir, INPUTS_FILE),
        "rationales": os.path.join(out_dir, RATIONALES_FILE),
    }
    _write_jsonl(paths["inputs"], inputs)
    _write_jsonl(paths["rationales"], rationales)
    vocabulary, tokens = None, {}
    if vocab_size:
        vocabulary = os.path.join(out_dir, VOCAB_FILE)
        # The students read the task prefixes too: they are in the vocabulary's text.
        texts = [*inputs, *rationales, *labels, LABEL_PREFIX, RATIONALE_PREFIX]
        vocab_lib.train_sentencepiece(texts, vocabulary, vocab_size, num_threads=num_threads)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=vocabulary)
        tokens = {
            INPUTS_FILE: sum(len(sp.encode(t)) for t in inputs),
            RATIONALES_FILE: sum(len(sp.encode(t)) for t in rationales),
        }
    return Corpus(
        paths["inputs"],
        paths["rationales"],
        vocabulary,
        {INPUTS_FILE: len(inputs), RATIONALES_FILE: len(rationales)},
        tokens,
    )
