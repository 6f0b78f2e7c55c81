"""`dsbs corpus`: the train text of prepared datasets (never validation or test) and a shared
vocabulary, for span-corruption pretraining."""

from __future__ import annotations

import json

from dsbs_jax.cli import main
from dsbs_jax.data.vocab import read_prepared


def _texts(path) -> list[str]:
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


def test_corpus_holds_train_text_only_and_a_vocabulary_that_reads_it(tmp_path, capsys):
    import sentencepiece as spm

    from dsbs_jax.experiments.builtin_data import make_builtin_data

    data_dir, _ = make_builtin_data(
        str(tmp_path / "data"), {"train": 60, "validation": 10, "test": 20}, seed=3,
        log=lambda s: None,
    )  # fmt: skip
    out = tmp_path / "corpus"
    assert main(["corpus", "arith", "--data_dir", data_dir, "--out", str(out),
                 "--vocab_size", "600"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    train = list(read_prepared("arith", "train", data_dir))
    held_out = [
        ex["input"] for s in ("validation", "test") for ex in read_prepared("arith", s, data_dir)
    ]
    inputs, rationales = _texts(out / "inputs.jsonl"), _texts(out / "rationales.jsonl")
    assert inputs == [ex["input"] for ex in train]
    assert rationales == [
        ex["rationale"] for ex in train if ex["status"] == "ok" and ex["rationale"]
    ]
    assert not set(held_out) & set(inputs)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    tokens = sum(len(sp.encode(t)) for t in inputs)
    assert f"inputs.jsonl: {len(inputs):,} documents, {tokens:,} tokens" in printed


def test_corpus_of_an_unprepared_dataset_is_one_line(tmp_path, capsys):
    assert main(["corpus", "arith", "--data_dir", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prepared dataset" in err[0] and "dsbs prepare arith" in err[0]
