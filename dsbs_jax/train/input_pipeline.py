"""Training batches from a seqio task or mixture, with per-task loss weights.

`exact` weighting: each example's tasks (a dsbs mixture's label and rationale) travel together,
adjacent in the stream and so packed into the same batch; `sampling` weighting: tasks are drawn
at their rates, as T5X does. The weights themselves come from `dsbs_jax.weighting`. A dsbs
task's small split is preprocessed once and replayed from memory each epoch (same order). Every
host reads only its own shard (seqio.ShardInfo by process index) and yields its share of the
global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax.data.features import TASK_IDS, TaskWeightedEncDecFeatureConverter, add_task_ids
from dsbs_jax.data.tasks import DsbsTfdsSource
from dsbs_jax.errors import UserError
from dsbs_jax.weighting import task_weights, tasks_and_rates

KEEP = ("inputs", "targets", TASK_IDS)


# A dsbs task's split of up to this many examples keeps its preprocessed (rendered, tokenized)
# examples in memory, so later epochs skip the text preprocessing. Other seqio tasks, and larger
# splits, are preprocessed again each epoch, as seqio does (their post-cache preprocessors may
# draw new samples each epoch).
MAX_EXAMPLES_IN_MEMORY = 100_000


def _split_size(task, split: str) -> int | None:
    try:
        return task.source.num_input_examples(split)
    except Exception:  # a source that cannot count this split
        return None


def _keep_in_memory(tasks, split: str) -> bool:
    """Whether every task is a dsbs task (deterministic preprocessing) with a small split."""
    for task in tasks:
        if not isinstance(task.source, DsbsTfdsSource):
            return False
        size = _split_size(task, split)
        if size is None or size > MAX_EXAMPLES_IN_MEMORY:
            return False
    return True


def _task_dataset(task, index, lengths, split, use_cached, shuffle, seed, shard_info, repeat):
    # Kept in memory: seqio's own order (preprocess, repeat, shuffle) with one epoch of
    # preprocessed examples cached, so the same examples come in the same order, preprocessed
    # once; its one-element shuffle buffer keeps the source's (file) shuffling and nothing else.
    keep = repeat and _keep_in_memory([task], split)
    ds = task.get_dataset(
        sequence_length=dict(lengths),
        split=split,
        use_cached=use_cached,
        shuffle=shuffle,
        shuffle_buffer_size=1 if keep else None,
        seed=seed,
        shard_info=shard_info,
        num_epochs=None if repeat and not keep else 1,
    )
    if keep:
        ds = ds.cache().repeat()
        if shuffle:
            ds = ds.shuffle(task.shuffle_buffer_size, seed=seed)
    ds = add_task_ids(ds, index)
    return ds.map(lambda ex: {k: ex[k] for k in (*KEEP, "id") if k in ex})


def build_dataset(
    mixture_or_task_name: str,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    weighting: str = "exact",
    split: str = "train",
    seed: int = 0,
    use_cached: bool = False,
    pack: bool = True,
    shuffle_buffer: int = 10_000,
    shard_info: seqio.ShardInfo | None = None,
) -> tuple[tf.data.Dataset, list[str], list[float]]:
    """The batched, converted tf.data pipeline; returns it with the task names and loss weights."""
    tasks, rates = tasks_and_rates(mixture_or_task_name)
    if shard_info is None and jax.process_count() > 1:
        shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    if weighting == "exact" and len(tasks) > 1:
        parts = [
            _task_dataset(t, i, feature_lengths, split, use_cached, False, seed, shard_info, False)
            for i, t in enumerate(tasks)
        ]
        zipped = tf.data.Dataset.zip(tuple(parts))
        if all("id" in p.element_spec for p in parts):

            def check(*exs):
                for ex in exs[1:]:
                    tf.debugging.assert_equal(
                        ex["id"], exs[0]["id"], message="tasks of a mixture are misaligned"
                    )
                return exs

            zipped = zipped.map(check)
        if _keep_in_memory(tasks, split):  # each epoch replays the preprocessed examples
            zipped = zipped.cache()
        zipped = zipped.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()

        def interleave(*exs):
            out = tf.data.Dataset.from_tensors({k: exs[0][k] for k in KEEP})
            for ex in exs[1:]:
                out = out.concatenate(tf.data.Dataset.from_tensors({k: ex[k] for k in KEEP}))
            return out

        ds = zipped.flat_map(interleave)
    else:
        parts = [
            _task_dataset(
                t, i, feature_lengths, split, use_cached, True, seed + i, shard_info, True
            )
            for i, t in enumerate(tasks)
        ]
        parts = [p.map(lambda ex: {k: ex[k] for k in KEEP}) for p in parts]
        ds = (
            parts[0]
            if len(parts) == 1
            else tf.data.Dataset.sample_from_datasets(parts, rates, seed=seed)
        )
    weights = task_weights(rates, weighting)
    converter = TaskWeightedEncDecFeatureConverter(weights, pack=pack)
    ds = converter(ds, dict(feature_lengths))
    local_batch = batch_size // jax.process_count()
    if local_batch * jax.process_count() != batch_size:
        raise UserError(f"BATCH_SIZE {batch_size} is not divisible by {jax.process_count()} hosts")
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds, [t.name for t in tasks], weights


# Hosts with at most this many cores give tf.data one thread of its own by default (see
# `input_threads`): there its default pool competes with XLA's threads for the same cores.
SMALL_HOST_CORES = 4


def input_threads(requested: int = 0, cores: int | None = None) -> int:
    """The threads tf.data gets: `requested` if positive; else (0, auto) 1 on a host of up to
    SMALL_HOST_CORES cores and 0 (tf.data's own pool, autotuned) on a larger one."""
    if requested < 0:
        raise UserError(f"INPUT_THREADS {requested}: must be 0 (auto) or a number of threads")
    if requested:
        return requested
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 1 if cores <= SMALL_HOST_CORES else 0


def numpy_batches(
    ds: tf.data.Dataset, start_step: int = 0, prefetch: int = 2, threads: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Host-local numpy batches, skipping the `start_step` batches a resumed run already used.

    `threads` > 0: tf.data runs on a private pool of that many threads, without autotuning
    (the batches and their order are the same; only where the work runs changes)."""
    if start_step:
        ds = ds.skip(start_step)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        options.autotune.enabled = False
        ds = ds.with_options(options)
    return ds.prefetch(prefetch).as_numpy_iterator()
