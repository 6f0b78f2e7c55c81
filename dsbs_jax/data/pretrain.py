"""A seqio task for T5's span-corruption pretraining over plain text.

`register_pretrain_task(name, ...)` registers the task `name` (default `pretrain`) over one of:
- text files, one document per line (`text_files`: paths or glob patterns, GCS included);
- JSON-lines files, one document per line in the string field `jsonl_field`;
- a TFDS dataset and its text feature (`tfds_name`, e.g. `c4/en:3.0.1`, `tfds_feature` `text`),
  read from `tfds_data_dir` (a GCS bucket on TPU; nothing is downloaded here).
Its pipeline is T5's `span_corruption` task: the text is tokenized into `targets`, documents are
concatenated, cut into pieces of the raw length whose corruption fits the inputs length
(`span_corruption.input_and_target_lengths`: 568 raw tokens for inputs 512, targets 114), each
piece is span-corrupted (noise density 0.15, mean span 3) and EOS is appended. `inputs` and
`targets` share the vocabulary: the sentencepiece model at `vocabulary_path` with 100 extra ids
on top (`dsbs_jax.data.vocab.EXTRA_IDS`), the sentinels. Blank documents are skipped.

The task has one split, `train`. Everything that can be checked is checked at registration, in
one line each: the files exist and hold text (every JSON line is an object whose field is a
string), the vocabulary loads and has enough extra ids, and the lengths fit span corruption.

gin registers it before the trainer starts: runs/pretrain.gin binds
`MIXTURE_OR_TASK_NAME = @register_pretrain_task()`, so the trainer's task name is what this
returns, after registering (see the header of that file, and `dsbs pretrain`).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from dsbs_jax.data import span_corruption as sc
from dsbs_jax.data.vocab import EXTRA_IDS
from dsbs_jax.errors import UserError, located
from dsbs_jax.records import iter_jsonl

DEFAULT_NAME = "pretrain"
DEFAULT_INPUTS_LENGTH = 512
SPLIT = "train"


def pretrain_lengths(
    inputs_length: int = DEFAULT_INPUTS_LENGTH,
    noise_density: float = sc.NOISE_DENSITY,
    mean_noise_span_length: float = sc.MEAN_NOISE_SPAN_LENGTH,
) -> dict[str, int]:
    """TASK_FEATURE_LENGTHS for span corruption at this inputs length: 512 -> targets 114."""
    _, targets = sc.input_and_target_lengths(inputs_length, noise_density, mean_noise_span_length)
    return {"inputs": inputs_length, "targets": targets}


def check_lengths(
    lengths: Mapping[str, int],
    noise_density: float = sc.NOISE_DENSITY,
    mean_noise_span_length: float = sc.MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(tokens_length, targets_length) for these TASK_FEATURE_LENGTHS, or a one-line UserError
    when the inputs are too short to hold a noise span or the targets cannot hold what
    span corruption of the inputs gives."""
    if not isinstance(lengths, Mapping) or "inputs" not in lengths or "targets" not in lengths:
        raise UserError(
            f"TASK_FEATURE_LENGTHS must be a dict like {{'inputs': 512, 'targets': 114}}, "
            f"got {lengths!r}"
        )
    inputs_length, targets_length = lengths["inputs"], lengths["targets"]
    tokens_length, needed = sc.input_and_target_lengths(
        inputs_length, noise_density, mean_noise_span_length
    )
    if _full_piece_spans(inputs_length, noise_density, mean_noise_span_length) < 1:
        shortest = next(
            n
            for n in itertools.count(inputs_length + 1)
            if _full_piece_spans(n, noise_density, mean_noise_span_length) >= 1
        )
        raise UserError(
            f"inputs length {inputs_length} is too short for span corruption: a piece of "
            f"{tokens_length} tokens gets no noise span; use at least {shortest}"
        )
    if isinstance(targets_length, bool) or not isinstance(targets_length, int):
        raise UserError(f"the targets length must be an integer, got {targets_length!r}")
    if targets_length < needed:
        raise UserError(
            f"targets length {targets_length} is shorter than the {needed} tokens that span "
            f"corruption of inputs {inputs_length} gives (raise it to {needed})"
        )
    return tokens_length, needed


def _full_piece_spans(inputs_length: int, noise_density: float, mean: float) -> int:
    tokens_length, _ = sc.input_and_target_lengths(inputs_length, noise_density, mean)
    return int(round(round(tokens_length * noise_density) / mean))


# --- sources -----------------------------------------------------------------------------------


def _expand(patterns: str | Sequence[str], what: str) -> list[str]:
    """Files matched by paths or glob patterns (local or GCS); each pattern must match a file."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise UserError(f"{pattern}: no such {what} file")
        for path in matched:
            if tf.io.gfile.isdir(path):
                raise UserError(f"{path}: is a directory, expected a {what} file")
        files.extend(matched)
    if not files:
        raise UserError(f"no {what} files given")
    return files


def _check_text_files(files: list[str]) -> None:
    """At least one non-blank line (read up to the first one), every file UTF-8 up to there."""
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise located(path, number, f"not UTF-8 text (byte {e.start})") from None
                if line.strip():
                    return
    raise UserError(f"{', '.join(files)}: no text (every line is blank); empty corpus")


def _check_jsonl_files(files: list[str], field: str) -> int:
    """Every non-blank line a JSON object whose `field` is a string; the non-empty documents."""
    documents = 0
    for path in files:
        for number, record in iter_jsonl(path, lambda p: tf.io.gfile.GFile(p, "rb")):
            if not isinstance(record, dict):
                raise located(path, number, "expected a JSON object")
            if field not in record:
                raise located(path, number, "missing", field=field)
            if not isinstance(record[field], str):
                raise located(path, number, "expected a string", field=field)
            documents += bool(record[field].strip())
    if not documents:
        raise UserError(f"{', '.join(files)}: no text in field '{field}'; empty corpus")
    return documents


def _jsonl_field(line, field: str):
    def parse(raw):
        raw = raw.numpy().decode("utf-8")
        return json.loads(raw)[field] if raw.strip() else ""

    text = tf.py_function(parse, [line], tf.string)
    text.set_shape([])
    return text


def _to_text(dataset: tf.data.Dataset, kind: str, field: str) -> tf.data.Dataset:
    """A source's examples as `{"targets": text}`, blank documents dropped."""
    if kind == "text":
        dataset = dataset.map(lambda line: {"targets": line})
    elif kind == "jsonl":
        dataset = dataset.map(lambda line: {"targets": _jsonl_field(line, field)})
    else:  # tfds
        dataset = dataset.map(lambda ex: {"targets": ex[field]})
    return dataset.filter(lambda ex: tf.strings.length(tf.strings.strip(ex["targets"])) > 0)


def _source(text_files, jsonl_files, jsonl_field, tfds_name, tfds_data_dir):
    """(kind, seqio source, the text field) of the one corpus given."""
    given = [k for k, v in (("text", text_files), ("jsonl", jsonl_files), ("tfds", tfds_name)) if v]
    if len(given) != 1:
        raise UserError(
            "give one corpus: text files (PRETRAIN_TEXT_FILES, --text), JSON-lines files "
            "(PRETRAIN_JSONL_FILES, --jsonl) or a TFDS dataset (PRETRAIN_TFDS_NAME), got "
            + (", ".join(given) if given else "none")
        )
    if given == ["text"]:
        files = _expand(text_files, "text")
        _check_text_files(files)
        return "text", seqio.TextLineDataSource({SPLIT: files}), None
    if given == ["jsonl"]:
        files = _expand(jsonl_files, "JSON-lines")
        documents = _check_jsonl_files(files, jsonl_field)
        source = seqio.TextLineDataSource({SPLIT: files}, num_input_examples={SPLIT: documents})
        return "jsonl", source, jsonl_field
    return "tfds", seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir), None


# --- the vocabulary ----------------------------------------------------------------------------


def _vocabulary(vocabulary_path, vocabulary) -> seqio.Vocabulary:
    if vocabulary is not None:
        return vocabulary
    if not vocabulary_path:
        raise UserError(
            "no vocabulary: set VOCABULARY_PATH (--vocabulary) to a sentencepiece model"
        )
    path = os.fspath(vocabulary_path)
    if not tf.io.gfile.exists(path):
        raise UserError(f"{path}: no such sentencepiece model (VOCABULARY_PATH)")
    vocab = seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)
    try:
        vocab.vocab_size  # noqa: B018 - loads the model
    except Exception:  # noqa: BLE001 - sentencepiece raises several kinds for a bad file
        raise UserError(f"{path}: not a sentencepiece model (VOCABULARY_PATH)") from None
    return vocab


def _check_sentinels(vocab: seqio.Vocabulary, tokens_length: int, density, mean) -> None:
    needed = sc.num_noise_spans(tokens_length, density, mean)
    extra = int(getattr(vocab, "extra_ids", 0) or 0)
    if extra < needed:
        raise UserError(
            f"the vocabulary {vocab} has {extra} extra ids; span corruption of {tokens_length} "
            f"tokens needs {needed} sentinels (T5's vocabularies have {EXTRA_IDS})"
        )


# --- registration ------------------------------------------------------------------------------


@gin.configurable
def register_pretrain_task(
    name: str = DEFAULT_NAME,
    *,
    text_files: str | Sequence[str] | None = None,
    jsonl_files: str | Sequence[str] | None = None,
    jsonl_field: str = "text",
    tfds_name: str | None = None,
    tfds_feature: str = "text",
    tfds_data_dir: str | None = None,
    vocabulary_path: str | None = None,
    vocabulary: seqio.Vocabulary | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    noise_density: float = sc.NOISE_DENSITY,
    mean_noise_span_length: float = sc.MEAN_NOISE_SPAN_LENGTH,
) -> str:
    """Registers the span-corruption task `name` over one corpus; returns `name`. Idempotent.

    `vocabulary_path`: a sentencepiece model (seqio adds 100 extra ids, the sentinels), or
    `vocabulary` itself. `task_feature_lengths`: the run's TASK_FEATURE_LENGTHS (default
    inputs 512, targets 114); its inputs length sets the raw piece length when seqio is asked
    for examples without lengths (as the trainer's length check does), and its targets length
    must hold what span corruption gives."""
    sc.check_noise(noise_density, mean_noise_span_length)
    lengths = dict(task_feature_lengths or pretrain_lengths(DEFAULT_INPUTS_LENGTH))
    tokens_length, _ = check_lengths(lengths, noise_density, mean_noise_span_length)
    vocab = _vocabulary(vocabulary_path, vocabulary)
    _check_sentinels(vocab, tokens_length, noise_density, mean_noise_span_length)
    kind, source, field = _source(text_files, jsonl_files, jsonl_field, tfds_name, tfds_data_dir)
    field = tfds_feature if kind == "tfds" else field
    features = {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(_to_text, kind=kind, field=field),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.CacheDatasetPlaceholder(),
            *sc.span_corruption_preprocessors(
                lengths["inputs"], noise_density, mean_noise_span_length
            ),
        ],
        output_features=features,
        metric_fns=[],
    )
    return name
