"""SeqIO registration: the tasks and mixtures of one task card.

For a dataset DS (a card), `register_card_tasks` registers:
- `DS_label`: `predict: <input>` -> the teacher label on train, the GOLD label on validation and
  test (so evaluation always scores against gold); metric from the card.
- `DS_rationale`: `explain: <input>` -> the teacher rationale on every split; no metric.
- `DS_gold_label`: `predict: <input>` -> the gold label on every split; metric from the card.
- mixtures `DS_dsbs` (label at alpha = 0.5, rationale at 0.5), `DS_dsbs_a10` ... `DS_dsbs_a90`
  (see `register_dsbs_mixture`; alpha 0.5 is `DS_dsbs`), `DS_finetune` (gold labels alone),
  `DS_distill` (teacher labels alone).
The names are made in one place, `dsbs_jax.names.mixture_or_task_name`.
Examples whose teacher output did not parse (status != "ok") are dropped from the teacher tasks
where teacher output is used (label on train, rationale everywhere); `dsbs stats` counts them.

Every example keeps `id` (the record id) and `task` (the task name) next to `inputs`, `targets`,
`inputs_pretokenized` and `targets_pretokenized`. A mixture's `get_dataset` keeps them only when
asked: `passthrough_features=["id", "task"]`, `copy_pretokenized=True`.

The source reads the prepared TFDS dataset `dsbs_DS:1.0.0` and passes any split string through
to TFDS, so `train[:25%]` and `train[:500]` work, on tasks and on mixtures alike. Its data dir is resolved at each use (see
`dsbs_jax.data.paths`): seqio's override, the registration's `data_dir`, $DSBS_DATA_DIR.
Registration is idempotent: registering a name again replaces it.
"""

from __future__ import annotations

import functools
import os

import seqio
import tensorflow as tf

from dsbs_jax import metrics
from dsbs_jax.data import paths
from dsbs_jax.data.cards import TaskCard, load_card
from dsbs_jax.data.text import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.data.vocab import EXTRA_IDS, LazyVocabulary
from dsbs_jax.errors import UserError
from dsbs_jax.names import DEFAULT_ALPHA, mixture_or_task_name
from dsbs_jax.weighting import dsbs_rates

DEFAULT_ALPHAS = tuple(a / 10 for a in range(1, 10))
KEPT_FEATURES = ("id", "task")


def base_split(split: str) -> str:
    """`train[:25%]` -> `train`: the split a TFDS split expression reads from."""
    return split.split("[", 1)[0].split("+", 1)[0].strip()


class SplitNames(tuple):
    """A source's split names, where `in` also accepts TFDS split expressions over them.

    seqio's Mixture (and Evaluator) keep a task only when `split in task.splits`; with plain
    names a slice such as `train[:25%]` matched no task and the mixture refused it.
    """

    def __contains__(self, split: object) -> bool:
        if not isinstance(split, str):
            return False
        parts = [part.strip() for part in split.split("+")]
        return all(
            part and super(SplitNames, self).__contains__(base_split(part)) for part in parts
        )


class _Loader(seqio.utils.LazyTfdsLoader):
    """seqio's TFDS loader with our data-dir rule, resolved at every use (never cached)."""

    @property
    def data_dir(self) -> str:
        return paths.resolve_data_dir(self._data_dir)


class DsbsTfdsSource(seqio.TfdsDataSource):
    """Reads `dsbs_<dataset>:1.0.0`; any TFDS split expression passes through unchanged.

    Each example gains a scalar string feature `split`: the base split it came from (`train`
    for `train[:25%]`), which the preprocessors use to pick teacher or gold targets.
    """

    def __init__(self, dataset: str, data_dir: str | os.PathLike | None = None):
        name = f"{paths.tfds_dataset_name(dataset)}:{paths.VERSION}"
        super().__init__(tfds_name=name)
        self.dataset = dataset
        self._tfds_dataset = _Loader(
            name, data_dir=os.fspath(data_dir) if data_dir is not None else None
        )

    @property
    def splits(self) -> SplitNames:
        """The prepared splits; `in` accepts slices of them (`train[:25%]`), so mixtures do."""
        return SplitNames(super().splits)

    def get_dataset(
        self,
        split: str | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        split = split or "train"
        ds = super().get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        name = tf.constant(base_split(split))
        return ds.map(lambda ex: {**ex, "split": name}, num_parallel_calls=tf.data.AUTOTUNE)


# --- preprocessors (module-level functions, bound with functools.partial) ----------------------


def _keep(ex, use_teacher_label: bool, needs_rationale: bool):
    ok = tf.equal(ex["status"], "ok")
    is_train = tf.equal(ex["split"], "train")
    if needs_rationale:
        return ok
    if use_teacher_label:  # the teacher's label on train, gold elsewhere
        return tf.where(is_train, ok, tf.strings.length(ex["gold_label"]) > 0)
    return tf.strings.length(ex["gold_label"]) > 0


def _render(ex, task: str, kind: str):
    if kind == "rationale":
        prefix, target = RATIONALE_PREFIX, ex["rationale"]
    elif kind == "label":
        prefix = LABEL_PREFIX
        target = tf.where(tf.equal(ex["split"], "train"), ex["teacher_label"], ex["gold_label"])
    else:  # gold_label
        prefix, target = LABEL_PREFIX, ex["gold_label"]
    return {
        "id": ex["id"],
        "task": tf.constant(task),
        "inputs": tf.strings.join([prefix, ex["input"]]),
        "targets": target,
    }


def render(dataset: tf.data.Dataset, task: str, kind: str) -> tf.data.Dataset:
    """Filters a source's examples for a task kind and renders inputs/targets text."""
    keep = functools.partial(
        _keep, use_teacher_label=kind == "label", needs_rationale=kind == "rationale"
    )
    dataset = dataset.filter(keep)
    return dataset.map(
        functools.partial(_render, task=task, kind=kind), num_parallel_calls=tf.data.AUTOTUNE
    )


def decode_text(output, example=None, is_target: bool = False) -> str:
    """Postprocess for metrics: model output or target as text (bytes are decoded)."""
    return output.decode("utf-8") if isinstance(output, bytes) else str(output)


# --- registration ------------------------------------------------------------------------------


def _add_task(name: str, source, kind: str, vocab, metric_fns) -> None:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(render, task=name, kind=kind),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features={
            "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
            "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
        },
        postprocess_fn=decode_text,
        metric_fns=metric_fns,
    )


def _add_mixture(name: str, tasks: list[tuple[str, float]]) -> None:
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks)


def register_dsbs_mixture(dataset: str, alpha: float) -> str:
    """Registers `DS_dsbs[_aNN]`: DS_label at rate alpha, DS_rationale at 1 - alpha."""
    name = mixture_or_task_name(dataset, "dsbs", alpha)
    parts = [mixture_or_task_name(dataset, kind) for kind in ("label", "rationale")]
    _add_mixture(name, list(zip(parts, dsbs_rates(alpha))))
    return name


def task_vocabulary(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    vocabulary_path: str | os.PathLike | None = None,
) -> seqio.SentencePieceVocabulary:
    """The vocabulary a dataset's tasks use: the given sentencepiece model, else the dataset's own
    (`$DSBS_VOCAB`, else `<data_dir>/dsbs_<dataset>/spm.model`, found at first use)."""
    if vocabulary_path is None:
        return LazyVocabulary(dataset, data_dir)
    path = os.fspath(vocabulary_path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such sentencepiece model (VOCABULARY_PATH)")
    return seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)


def register_card_tasks(
    card: TaskCard,
    data_dir: str | os.PathLike | None = None,
    vocabulary_path: str | os.PathLike | None = None,
) -> list[str]:
    """Registers the tasks and mixtures of one card; returns their names. Idempotent.

    `data_dir` None: resolved at each use (`dsbs_jax.data.paths`); `vocabulary_path` None: the
    dataset's own vocabulary (see `task_vocabulary`)."""
    ds = card.name
    source = DsbsTfdsSource(ds, data_dir)
    vocab = task_vocabulary(ds, data_dir, vocabulary_path)
    label_metric = [metrics.seqio_metric(card.metric)]
    names = []
    for kind, metric_fns in (
        ("label", label_metric),
        ("rationale", []),
        ("gold_label", label_metric),
    ):
        names.append(mixture_or_task_name(ds, kind))
        _add_task(names[-1], source, kind, vocab, metric_fns)
    names.append(register_dsbs_mixture(ds, DEFAULT_ALPHA))
    for alpha in DEFAULT_ALPHAS:  # DS_dsbs_a10 ... DS_dsbs_a90, but for 0.5: DS_dsbs
        if mixture_or_task_name(ds, "dsbs", alpha) not in names:
            names.append(register_dsbs_mixture(ds, alpha))
    for kind, task in (("finetune", "gold_label"), ("distill", "label")):
        names.append(mixture_or_task_name(ds, kind))
        _add_mixture(names[-1], [(mixture_or_task_name(ds, task), 1.0)])
    return names


def bind_tasks(
    name: str,
    data_dir: str | os.PathLike | None = None,
    vocabulary_path: str | os.PathLike | None = None,
) -> None:
    """Registers the dsbs tasks behind `name` (a task or mixture) again, with this data dir and
    vocabulary, and the mixture `name` over them.

    Each run (`train`, `eval`, `predict`, the T5X backend) calls it with its own values, so what
    an earlier run in the same process chose never carries over. Tasks that are not read from a
    prepared dsbs dataset are left as they are."""
    provider = seqio.get_mixture_or_task(name)
    subtasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    rates = (
        [(t.name, provider.get_rate(t)) for t in subtasks]
        if isinstance(provider, seqio.Mixture)
        else None
    )
    datasets = {t.source.dataset for t in subtasks if isinstance(t.source, DsbsTfdsSource)}
    if vocabulary_path is not None and not datasets:
        raise UserError(
            f"{name}: VOCABULARY_PATH applies to tasks read from a prepared dsbs dataset; "
            f"{name}'s tasks keep their own vocabulary"
        )
    for dataset in sorted(datasets):
        register_card_tasks(load_card(dataset), data_dir, vocabulary_path)
    if rates is not None and datasets:
        _add_mixture(name, rates)


def registered_dsbs_names() -> dict[str, list[str]]:
    """Registered task and mixture names, each list sorted."""
    return {
        "tasks": sorted(seqio.TaskRegistry.names()),
        "mixtures": sorted(seqio.MixtureRegistry.names()),
    }
