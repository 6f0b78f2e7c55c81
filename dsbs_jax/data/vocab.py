"""Vocabularies: training a T5-style sentencepiece model, and resolving one lazily for the tasks.

A trained model follows T5's conventions: pad 0, eos 1, unk 2, no bos, digits split, byte
fallback; seqio adds 100 sentinel ids on top (`extra_ids=100`). Its default place is
`<data_dir>/dsbs_<dataset>/spm.model`, next to the TFDS version folder.

The tasks' output features hold a `LazyVocabulary`, which finds its model file at first use:
`$DSBS_VOCAB`, else the default place under the data dir (see `dsbs_jax.data.paths`). A run that
names a vocabulary (VOCABULARY_PATH, such as the public 32k T5 model) registers its tasks with
that model instead (`data.tasks.bind_tasks`). Importing `dsbs_jax.tasks` reads no file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator

import seqio

from dsbs_jax import atomic
from dsbs_jax.data import paths
from dsbs_jax.data.text import EOS_ID, LABEL_PREFIX, PAD_ID, RATIONALE_PREFIX, UNK_ID
from dsbs_jax.errors import UserError

VOCAB_ENV = "DSBS_VOCAB"
VOCAB_FILE = "spm.model"
EXTRA_IDS = 100


def default_vocab_path(dataset: str, data_dir: str | os.PathLike | None = None) -> str:
    """`<data_dir>/dsbs_<dataset>/spm.model`."""
    return os.path.join(paths.dataset_dir(dataset, data_dir), VOCAB_FILE)


def resolve_vocab_path(dataset: str, data_dir: str | os.PathLike | None = None) -> str:
    """The model file of a dataset's own vocabulary: $DSBS_VOCAB, else the default place."""
    return os.environ.get(VOCAB_ENV) or default_vocab_path(dataset, data_dir)


class LazyVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePieceVocabulary whose model file is resolved at first use, not at creation."""

    def __init__(self, dataset: str, data_dir: str | os.PathLike | None = None):
        super().__init__("", extra_ids=EXTRA_IDS)
        self._dataset = dataset
        self._data_dir = os.fspath(data_dir) if data_dir is not None else None

    def _model_context(self):
        path = resolve_vocab_path(self._dataset, self._data_dir)
        if path != self._sentencepiece_model_file:
            if not os.path.exists(path):
                root = paths.resolve_data_dir(self._data_dir)
                prepared = os.path.join(root, paths.tfds_dataset_name(self._dataset))
                if not os.environ.get(VOCAB_ENV) and not os.path.isdir(prepared):
                    raise UserError(
                        f"{prepared}: no prepared dataset (and so no vocabulary); run `dsbs "
                        f"prepare {self._dataset} --source_dir DIR --data_dir {root}`, then "
                        f"`dsbs vocab {self._dataset} --data_dir {root}`"
                    )
                raise UserError(
                    f"{path}: no vocabulary; train one with `dsbs vocab {self._dataset} "
                    f"--data_dir DIR`, or set {VOCAB_ENV} to a sentencepiece model"
                )
            self._sentencepiece_model_file = path
            self._model = None
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        return resolve_vocab_path(self._dataset, self._data_dir)

    def __eq__(self, other) -> bool:
        if not isinstance(other, seqio.SentencePieceVocabulary):
            return False
        return (
            self.sentencepiece_model_file == other.sentencepiece_model_file
            and self._extra_ids == other._extra_ids
        )

    def __hash__(self) -> int:
        return hash((self._dataset, self._data_dir))

    def __str__(self) -> str:
        return f"LazyVocabulary(dataset={self._dataset}, file={self.sentencepiece_model_file})"


def get_vocabulary(task_or_mixture_name: str) -> seqio.Vocabulary:
    """The targets vocabulary of a registered task or mixture (inputs share it)."""
    provider = seqio.get_mixture_or_task(task_or_mixture_name)
    return provider.output_features["targets"].vocabulary


def training_texts(examples: Iterable[dict[str, str]]) -> Iterator[str]:
    """What the vocabulary is trained on: prefixed inputs, labels and rationales."""
    for ex in examples:
        yield LABEL_PREFIX + ex["input"]
        yield RATIONALE_PREFIX + ex["input"]
        for key in ("gold_label", "teacher_label", "rationale"):
            if ex.get(key):
                yield ex[key]


def train_sentencepiece(
    texts: Iterable[str],
    out_path: str,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    num_threads: int | None = None,
) -> str:
    """Trains a sentencepiece model (`unigram` or `bpe`) with T5's ids (at most vocab_size
    pieces) and writes it. num_threads 1 makes the model reproducible bit for bit."""
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            split_digits=True,
            byte_fallback=True,
            hard_vocab_limit=False,  # a small corpus gets fewer pieces, not an error
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc",
            max_sentence_length=1 << 14,
            num_threads=num_threads or max(1, min(8, os.cpu_count() or 1)),
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1].split("] ")[-1]
        raise UserError(f"sentencepiece: {msg} (see --vocab_size)") from None
    with atomic.open_atomic(out_path, "wb") as f:  # a full disk leaves no partial file
        f.write(model.getvalue())
    return out_path


def read_prepared(dataset: str, split: str, data_dir: str | os.PathLike | None = None):
    """The prepared TFDS examples of one split as dicts of str (read from files)."""
    import tensorflow_datasets as tfds

    root = paths.resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(paths.tfds_dataset_name(dataset), data_dir=root)
    except Exception:  # noqa: BLE001 - TFDS raises several kinds for "not there"
        raise UserError(
            f"{os.path.join(root, paths.tfds_dataset_name(dataset))}: no prepared dataset; "
            f"run `dsbs prepare {dataset} --source_dir DIR --data_dir {root}`"
        ) from None
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        yield {k: v.decode("utf-8") for k, v in ex.items()}


def train_vocab(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    vocab_size: int = 8000,
    out_path: str | None = None,
    model_type: str = "unigram",
    num_threads: int | None = None,
    say: Callable[[str], None] | None = None,
) -> str:
    """Trains the dataset's vocabulary on its prepared train split; returns the model path.
    `say` gets a line once the prepared data is read, before the (long) training starts."""
    out_path = out_path or default_vocab_path(dataset, data_dir)
    texts = list(training_texts(read_prepared(dataset, "train", data_dir)))
    if say is not None:
        say(
            f"training a {vocab_size}-piece sentencepiece model on {dataset} train ({len(texts)} texts)"
        )
    return train_sentencepiece(texts, out_path, vocab_size, model_type, num_threads)
