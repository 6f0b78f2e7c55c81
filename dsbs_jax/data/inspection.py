"""What `dsbs inspect` shows of a task or mixture: its tasks and rates, rendered examples,
token-length percentiles with the share given lengths would truncate, and the task shares of a
drawn sample. Reads no terminal or stdin (seqio's own inspect script does, and fails without
one); the vocabulary must exist (one line saying so when it does not). The tasks are the
registered ones (`import dsbs_jax.tasks` registers every card's)."""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np
import seqio

from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.data.vocab import get_vocabulary
from dsbs_jax.errors import UserError
from dsbs_jax.weighting import tasks_and_rates

SAMPLE = 2000  # examples drawn from a mixture to measure its task shares


def length_stats(lengths: list[int], limit: int) -> dict[str, float]:
    """p50/p90/p99/max of token lengths, and the share longer than `limit`."""
    if not lengths:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "truncated": 0.0}
    a = np.asarray(lengths)
    return {
        "p50": int(np.percentile(a, 50)),
        "p90": int(np.percentile(a, 90)),
        "p99": int(np.percentile(a, 99)),
        "max": int(a.max()),
        "truncated": round(float((a > limit).mean()), 4),
    }


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _task_dataset(task: seqio.Task, split: str):
    try:
        return task.get_dataset(None, split=split, shuffle=False)
    except (ValueError, KeyError) as e:  # an unknown split or an unprepared dataset
        if type(e).__name__ == "DatasetNotFoundError":
            raise UserError(
                f"{task.name}: no prepared dataset {task.source.tfds_dataset.name} in "
                f"{task.source.tfds_dataset.data_dir}; run `dsbs prepare` first"
            ) from None
        raise UserError(f"{task.name} split {split!r}: {str(e).splitlines()[0]}") from None


def inspect_tasks(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    examples: int = 3,
    sequence_length: dict[str, int] | None = None,
    max_examples: int = 20000,
) -> dict[str, Any]:
    """Everything `dsbs inspect` shows of a task or mixture, as a JSON-ready dict.

    `data_dir`: the prepared data (None: $DSBS_DATA_DIR, else $TFDS_DATA_DIR); `examples`:
    examples shown per task; `sequence_length`: {"inputs": N, "targets": M} to check truncation
    against (default 512/256); `max_examples`: examples per task measured for lengths.
    Keys: name, kind, split, vocabulary, sequence_length, tasks (rates), counts, examples,
    lengths, task_shares, task_shares_sample."""
    lengths = sequence_length or {"inputs": 512, "targets": 256}
    if data_dir and not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: no such directory")
    tasks_and_rates(name)  # an unknown name: one line
    tasks_lib.bind_tasks(name, data_dir)
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError:
        raise UserError(f"unknown task or mixture {name!r}; see `dsbs tasks`") from None
    vocab = get_vocabulary(name)
    vocab.vocab_size  # noqa: B018 - loads the model now: a missing one is a one-line error
    is_mixture = isinstance(provider, seqio.Mixture)
    rates = {t.name: provider.get_rate(t) for t in provider.tasks} if is_mixture else {name: 1.0}
    out = {
        "name": name,
        "kind": "mixture" if is_mixture else "task",
        "split": split,
        "vocabulary": vocab.sentencepiece_model_file,
        "sequence_length": lengths,
        "tasks": rates,
        "counts": {},
        "examples": {},
        "lengths": {},
    }
    for task_name in rates:
        task = seqio.get_mixture_or_task(task_name)
        shown, li, lt = [], [], []
        for ex in _task_dataset(task, split).take(max_examples).as_numpy_iterator():
            if len(shown) < examples:
                shown.append(
                    {
                        "id": _text(ex["id"]),
                        "inputs": _text(ex["inputs_pretokenized"]),
                        "targets": _text(ex["targets_pretokenized"]),
                    }
                )
            li.append(len(ex["inputs"]))
            lt.append(len(ex["targets"]))
        source_n = task.source.num_input_examples(split)
        out["counts"][task_name] = {"examples": len(li), "source_records": int(source_n)}
        out["examples"][task_name] = shown
        out["lengths"][task_name] = {
            "inputs": length_stats(li, lengths["inputs"]),
            "targets": length_stats(lt, lengths["targets"]),
        }
    if is_mixture:
        ds = provider.get_dataset(
            lengths,
            split=split,
            shuffle=True,
            seed=0,
            num_epochs=None,
            passthrough_features=["task"],
        )
        drawn = collections.Counter(_text(ex["task"]) for ex in ds.take(SAMPLE).as_numpy_iterator())
        total = sum(drawn.values()) or 1
        out["task_shares"] = {t: round(drawn.get(t, 0) / total, 4) for t in rates}
        out["task_shares_sample"] = total
    else:
        out["task_shares"] = {name: 1.0}
        out["task_shares_sample"] = 0
    return out


def format_report(r: dict[str, Any]) -> str:
    """An `inspect_tasks` result as `dsbs inspect` prints it."""
    lines = [f"{r['name']} ({r['kind']}), split {r['split']}, vocabulary {r['vocabulary']}"]
    for t, rate in r["tasks"].items():
        c = r["counts"][t]
        dropped = c["source_records"] - c["examples"]
        lines.append(
            f"  {t:<24} rate {rate:<6g} {c['examples']} examples ({dropped} of "
            f"{c['source_records']} records left out: unparsed teacher output or no gold label)"
        )
    for t, exs in r["examples"].items():
        lines.append(f"\nexamples of {t}:")
        for ex in exs:
            lines.append(f"  [{ex['id']}]")
            lines.append("    inputs:  " + ex["inputs"].replace("\n", "\n             "))
            lines.append("    targets: " + ex["targets"].replace("\n", "\n             "))
    sl = r["sequence_length"]
    lines.append(f"\ntoken lengths (with EOS); truncated = share longer than {sl}:")
    lines.append(
        f"  {'task':<24} {'feature':<8} {'p50':>5} {'p90':>5} {'p99':>5} {'max':>5} "
        f"{'truncated':>10}"
    )
    for t, feats in r["lengths"].items():
        for f, s in feats.items():
            lines.append(
                f"  {t:<24} {f:<8} {s['p50']:>5} {s['p90']:>5} {s['p99']:>5} {s['max']:>5} "
                f"{s['truncated']:>10.2%}"
            )
    if r["kind"] == "mixture":
        lines.append(
            f"\ntask shares over {r['task_shares_sample']} drawn examples (seqio sampling, seed 0):"
        )
        total = sum(r["tasks"].values())
        for t, share in r["task_shares"].items():
            lines.append(f"  {t:<24} {share:.2%}  (rate {r['tasks'][t] / total:.2%})")
    return "\n".join(lines)
