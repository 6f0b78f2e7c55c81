"""Span-corruption pretraining: the corruption, its statistics and seeding, the lengths, the task
over text and JSON lines, `dsbs pretrain`'s errors, and a short run whose checkpoint starts a
`dsbs train` run."""

from __future__ import annotations

import json
import os
import pathlib
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf

from dsbs_jax import cli
from dsbs_jax.data import pretrain
from dsbs_jax.data import span_corruption as sc
from dsbs_jax.data.vocab import train_sentencepiece
from dsbs_jax.errors import UserError

LENGTHS = {"inputs": 64, "targets": 14}  # 70 raw tokens: 10 noise in 3 spans


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    adjectives = "red small old quick green tall quiet bright".split()
    nouns = "cat dog bird horse river tree house garden teacher student".split()
    verbs = "sees follows likes finds watches helps".split()
    out = []
    for _ in range(n):
        a, b = rng.sample(nouns, 2)
        out.append(
            f"the {rng.choice(adjectives)} {a} {rng.choice(verbs)} the "
            f"{rng.choice(adjectives)} {b} near the {rng.choice(nouns)} ."
        )
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    """A folder with corpus.txt (one document per line, a blank line too), corpus.jsonl and a
    tiny sentencepiece model spm.model trained on the sentences."""
    root = tmp_path_factory.mktemp("pretrain")
    sentences = _sentences(400)
    (root / "corpus.txt").write_text(
        "\n".join(sentences[:200]) + "\n\n" + "\n".join(sentences[200:])
    )
    with open(root / "corpus.jsonl", "w") as f:
        for i, s in enumerate(sentences[:100]):
            f.write(json.dumps({"id": i, "body": s}) + "\n")
    train_sentencepiece(sentences, str(root / "spm.model"), vocab_size=400, num_threads=1)
    return root


def _task(corpus: pathlib.Path, name: str = "pretrain_test", **kwargs) -> seqio.Task:
    kwargs.setdefault("text_files", [str(corpus / "corpus.txt")])
    pretrain.register_pretrain_task(
        name, vocabulary_path=str(corpus / "spm.model"), task_feature_lengths=LENGTHS, **kwargs
    )
    return seqio.get_mixture_or_task(name)


def _examples(task: seqio.Task, seed: int | None = 0, n: int | None = None) -> list[dict]:
    ds = task.get_dataset(
        sequence_length=LENGTHS, split="train", shuffle=False, seed=seed, num_epochs=1
    )
    return list((ds.take(n) if n else ds).as_numpy_iterator())


# --- lengths -----------------------------------------------------------------------------------


def test_input_and_target_lengths_are_t5s():
    # T5's pretraining lengths: 568 raw tokens -> 85 noise (round(85.2)) in 28 spans
    # (round(28.3)): inputs 568 - 85 + 28 + EOS = 512, targets 85 + 28 + EOS = 114.
    assert sc.input_and_target_lengths(512) == (568, 114)
    # 256 by hand: 284 tokens -> 43 noise (round(42.6)), 14 spans (round(14.33)): inputs
    # 284 - 43 + 14 + 1 = 256, targets 43 + 14 + 1 = 58; 285 tokens would give 257 inputs.
    assert sc.input_and_target_lengths(256) == (284, 58)
    assert pretrain.pretrain_lengths(256) == {"inputs": 256, "targets": 58}
    assert pretrain.pretrain_lengths(64) == LENGTHS
    for bad in ({"inputs": 8, "targets": 4}, {"inputs": 512, "targets": 100}):
        with pytest.raises(UserError):
            pretrain.check_lengths(bad)


# --- the corruption ----------------------------------------------------------------------------


def test_corruption_of_a_given_mask_by_hand():
    tokens = tf.range(10, 20)  # 10 11 12 ... 19
    mask = tf.constant([0, 0, 1, 1, 0, 0, 0, 1, 0, 1]) > 0
    out = sc.corrupt(tokens, mask, vocab_size=100)  # sentinels 99, 98, 97 (<extra_id_0> first)
    assert out["inputs"].numpy().tolist() == [10, 11, 99, 14, 15, 16, 98, 18, 97]
    assert out["targets"].numpy().tolist() == [99, 12, 13, 98, 17, 97, 19]


def test_noise_mask_for_a_seed():
    seeds = [tf.constant([1, 2]), tf.constant([3, 4])]
    mask = sc.random_spans_noise_mask(40, seeds).numpy()
    # 40 tokens: 6 noise tokens in 2 spans, starting with non-noise, ending in noise.
    assert mask.astype(int).tolist() == [0] * 8 + [1] * 4 + [0] * 26 + [1] * 2
    again = sc.random_spans_noise_mask(40, seeds).numpy()
    assert (mask == again).all()
    other = sc.random_spans_noise_mask(40, [tf.constant([5, 6]), tf.constant([7, 8])]).numpy()
    assert not (mask == other).all() and other.sum() == 6
    assert sc.random_spans_noise_mask(1, seeds).numpy().tolist() == [False]


def test_noise_mask_statistics_over_many_seeds():
    n, length = 1000, 568

    def draw(i):
        i = tf.cast(i, tf.int32)
        return sc.random_spans_noise_mask(length, [tf.stack([i, 0]), tf.stack([i, 1])])

    masks = np.stack(list(tf.data.Dataset.range(n).map(draw).as_numpy_iterator()))
    assert (masks.sum(1) == 85).all()  # round(568 * 0.15), in every example
    starts = masks[:, 1:] & ~masks[:, :-1]
    assert (starts.sum(1) == 28).all()  # round(85 / 3) spans: mean length 3.04
    assert (~masks[:, 0]).all() and masks[:, -1].all()  # non-noise first, noise last
    # Spans have random lengths and places: each position is noise about 15% of the time.
    rate = masks[:, 10:-10].mean(0)
    assert abs(rate.mean() - 0.15) < 0.005 and rate.min() > 0.1 and rate.max() < 0.2
    lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], masks[0], [0]]))))[::2]
    assert lengths.sum() == 85 and len(set(lengths)) > 1

    # Over pieces of 20 to 1000 tokens: 15% noise in spans of mean length 3.
    def draw_any(i):
        i = tf.cast(i, tf.int32)
        n = 20 + i % 981
        return tf.reduce_sum(tf.cast(draw_at(n, i), tf.int32)), n, spans_of(draw_at(n, i))

    def draw_at(n, i):
        return sc.random_spans_noise_mask(n, [tf.stack([i, 2]), tf.stack([i, 3])])

    def spans_of(mask):
        return tf.reduce_sum(tf.cast(mask[1:] & ~mask[:-1], tf.int32))

    noise, total, spans = np.array(
        list(tf.data.Dataset.range(n).map(draw_any).as_numpy_iterator())
    ).T
    assert abs(noise.sum() / total.sum() - 0.15) < 0.002
    assert abs(noise.sum() / spans.sum() - 3.0) < 0.05


def test_task_examples_fit_their_lengths_with_t5s_counts(corpus):
    task = _task(corpus)
    vocab = task.output_features["targets"].vocabulary
    examples = _examples(task)
    assert len(examples) > 20
    full = 0
    for ex in examples:
        inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
        assert inputs[-1] == targets[-1] == 1  # EOS
        sentinels = [t for t in targets if t >= vocab.vocab_size - 100]
        top = vocab.vocab_size - 1  # <extra_id_0>, then down
        assert sentinels == list(range(top, top - len(sentinels), -1))
        assert [t for t in inputs if t >= vocab.vocab_size - 100] == sentinels
        noise = len(targets) - len(sentinels) - 1
        raw = len(inputs) - len(sentinels) - 1 + noise
        assert noise == min(max(round(max(raw, 2) * 0.15), 1), max(raw, 2) - 1)
        assert len(sentinels) == max(round(noise / 3), 1)
        full += raw == 70
        assert len(inputs) <= 64 and len(targets) <= 14
    # Every piece but the last of each 128 documents has the full 70 tokens: 64 / 14 tokens.
    assert full >= len(examples) - 4


def test_full_pieces_fill_their_lengths_at_every_inputs_length():
    """For inputs lengths 16 to 1024, a full piece's corruption fits inputs_length and its
    targets are exactly targets_length long (the mask counts as the length rule does)."""

    def lengths(inputs_length):
        tokens_length, targets_length = sc.input_and_target_lengths(int(inputs_length))
        return tokens_length, targets_length

    table = [(n, *lengths(n)) for n in range(16, 1025)]

    def corrupted(row):
        tokens = tf.range(10, 10 + row[1])
        mask = sc.random_spans_noise_mask(row[1], [tf.stack([row[0], 0]), tf.stack([row[0], 1])])
        out = sc.corrupt(tokens, mask, 2000)
        return tf.size(out["inputs"]) + 1, tf.size(out["targets"]) + 1

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(table, tf.int32)).map(corrupted)
    for (inputs_length, _, targets_length), (n_in, n_tg) in zip(table, ds.as_numpy_iterator()):
        assert n_in <= inputs_length and n_tg == targets_length, inputs_length


def test_inputs_and_targets_give_back_the_text(corpus):
    """Putting each span back in place of its sentinel gives the concatenated documents."""
    task = _task(corpus)
    vocab = task.output_features["targets"].vocabulary
    first = vocab.vocab_size - 100
    stream = []
    for ex in _examples(task, n=10):
        spans, current = {}, None
        for t in ex["targets"].tolist()[:-1]:
            if t >= first:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        for t in ex["inputs"].tolist()[:-1]:
            stream.extend(spans[t] if t >= first else [t])
    lines = [s for s in (corpus / "corpus.txt").read_text().splitlines() if s.strip()]
    tokens = [t for line in lines[:30] for t in vocab.encode(line)]
    assert stream == tokens[: len(stream)] and len(stream) > 600


def test_same_seed_same_examples_other_seed_differs(corpus):
    task = _task(corpus)
    a, b, c = (_examples(task, seed=s, n=8) for s in (3, 3, 4))
    assert all((x["inputs"] == y["inputs"]).all() for x, y in zip(a, b))
    assert any(
        x["inputs"].shape != z["inputs"].shape or (x["inputs"] != z["inputs"]).any()
        for x, z in zip(a, c)
    )


def test_trainer_length_check_reads_the_task(corpus):
    from dsbs_jax.train import checks

    task = _task(corpus)
    said = []
    checks.check_lengths_fit([task], LENGTHS, "train", say=said.append)
    assert said == []
    checks.check_lengths_fit([task], {"inputs": 64, "targets": 10}, "train", say=said.append)
    assert len(said) == 1 and "have targets longer than TASK_FEATURE_LENGTHS" in said[0]


# --- sources and bad input ---------------------------------------------------------------------


def test_jsonl_and_tfds_sources(corpus, tmp_path):
    task = _task(
        corpus,
        "pretrain_test_jsonl",
        text_files=None,
        jsonl_files=[str(corpus / "corpus.jsonl")],
        jsonl_field="body",
    )
    assert len(_examples(task, n=3)) == 3
    assert task.source.num_input_examples("train") == 100
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "fine"}\n\n{"body": 3}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:3: field 'body': expected a string"):
        _task(
            corpus, "pretrain_test_bad", text_files=None, jsonl_files=[str(bad)], jsonl_field="body"
        )
    # TFDS: only the code path (nothing is read or downloaded until examples are asked for).
    task = _task(corpus, "pretrain_test_tfds", text_files=None, tfds_name="c4/en:3.0.1")
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.source.tfds_dataset.name == "c4/en:3.0.1"


def test_a_vocabulary_without_extra_ids_is_refused(corpus):
    vocab = seqio.SentencePieceVocabulary(str(corpus / "spm.model"), extra_ids=0)
    with pytest.raises(UserError, match="0 extra ids; span corruption of 70 tokens needs 3"):
        pretrain.register_pretrain_task(
            "pretrain_test_noextra",
            text_files=[str(corpus / "corpus.txt")],
            vocabulary=vocab,
            task_feature_lengths=LENGTHS,
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--text": "missing.txt"}, "missing.txt: no such text file"),
        ({"--text": "blank.txt"}, "no text (every line is blank); empty corpus"),
        ({"--vocabulary": "blank.txt"}, "blank.txt: not a sentencepiece model"),
        ({"--vocabulary": "nothing.model"}, "nothing.model: no such sentencepiece model"),
        ({"--lengths": "8"}, "inputs length 8 is too short for span corruption"),
        ({"--lengths": "64,10"}, "targets length 10 is shorter than the 14 tokens"),
        ({"--steps": "0"}, "--steps must be a positive integer"),
    ],
)
def test_bad_input_is_one_line(corpus, tmp_path, capsys, change, message):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    flags = {
        "--text": str(corpus / "corpus.txt"),
        "--vocabulary": str(corpus / "spm.model"),
        "--model_dir": str(tmp_path / "run"),
        "--model": "micro",
        "--steps": "2",
        "--batch_size": "8",
        "--lengths": "64",
    }
    flags.update(
        {k: str(tmp_path / v) if v.endswith((".txt", ".model")) else v for k, v in change.items()}
    )
    argv = ["pretrain", *[x for kv in flags.items() for x in kv]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not os.path.exists(tmp_path / "run")


# --- a short pretraining, and its checkpoint as a student's start -----------------------------


def _register_downstream(corpus: pathlib.Path) -> str:
    """`pretrain_test_first_word`: a sentence -> its second word, in the pretraining vocabulary."""
    sentences = _sentences(64, seed=1)

    def dataset(split, shuffle_files=False, seed=None):
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": sentences, "targets": [s.split()[1] for s in sentences]}
        )

    vocab = seqio.SentencePieceVocabulary(str(corpus / "spm.model"), extra_ids=100)
    name = "pretrain_test_first_word"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset, splits=("train",)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
    )
    return name


def test_pretrain_lowers_the_loss_and_its_checkpoint_starts_a_train_run(corpus, tmp_path, capsys):
    import jax
    import orbax.checkpoint as ocp

    model_dir = tmp_path / "pretrain"
    argv = [
        "pretrain", "--text", str(corpus / "corpus.txt"), "--vocabulary", str(corpus / "spm.model"),
        "--model_dir", str(model_dir), "--model", "micro", "--steps", "20", "--batch_size", "8",
        "--lengths", "64", "--gin.LOG_EVERY=4", "--gin.WARMUP_STEPS=10",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {model_dir}/checkpoint_20" in out and "target tokens/s" in out
    rows = [
        json.loads(line)
        for line in (model_dir / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    assert losses[-1] < losses[0] - 0.3, losses
    config = (model_dir / "config.gin").read_text()
    assert "MIXTURE_OR_TASK_NAME = @register_pretrain_task()" in config

    # Its checkpoint starts a `dsbs train` run of the same model and vocabulary; at learning rate
    # 0 the parameters stay those of the pretrained checkpoint.
    name = _register_downstream(corpus)
    student = tmp_path / "student"
    argv = [
        "train", "--gin_file=models/micro.gin", "--gin_file=runs/finetune.gin",
        f"--gin.MODEL_DIR='{student}'", f"--gin.MIXTURE_OR_TASK_NAME='{name}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 8}", "--gin.TRAIN_STEPS=1",
        "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.train.test_split=None",
        f"--gin.INITIAL_CHECKPOINT_PATH='{model_dir}/checkpoint_20'",
        "--gin.learning_rate_schedule.base_learning_rate=0.0",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    read = ocp.StandardCheckpointer()
    before = read.restore(model_dir / "checkpoint_20" / "params")
    after = read.restore(student / "checkpoint_1" / "params")
    jax.tree.map(np.testing.assert_array_equal, before, after)  # same tree, same values
