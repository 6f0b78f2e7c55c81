"""`dsbs inspect NAME --split S --data_dir DIR [--examples N] [--sequence_length inputs=512,
targets=256] [--json]`: a task or mixture's tasks and rates, rendered examples, token-length
percentiles with the share the given lengths would truncate, and task shares over a sample.

Reads no terminal or stdin (seqio's own inspect script does, and fails without one). Token
lengths need the vocabulary; with none trained yet it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

from dsbs_jax.errors import UserError

SAMPLE = 2000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a registered task or mixture (see `dsbs tasks`)")
    parser.add_argument("--split", default="train", help="split or TFDS slice (default train)")
    parser.add_argument(
        "--data_dir", help="prepared data (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)"
    )
    parser.add_argument("--examples", type=int, default=3, help="examples shown per task")
    parser.add_argument(
        "--sequence_length",
        default="inputs=512,targets=256",
        help="lengths to check truncation against (default inputs=512,targets=256)",
    )
    parser.add_argument(
        "--max_examples", type=int, default=20000, help="examples per task measured for lengths"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_lengths(text: str) -> dict[str, int]:
    """`inputs=512,targets=256` -> {"inputs": 512, "targets": 256}."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("inputs", "targets") or not value.strip().isdigit():
            raise UserError(f"--sequence_length {text!r}: expected inputs=N,targets=M")
        out[key.strip()] = int(value)
    if set(out) != {"inputs", "targets"}:
        raise UserError(f"--sequence_length {text!r}: expected inputs=N,targets=M")
    return out


def _length_stats(lengths: list[int], limit: int) -> dict:
    import numpy as np

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


def inspect(name: str, split: str, n_examples: int, lengths: dict[str, int], max_examples: int):
    """Everything `dsbs inspect` shows, as a JSON-ready dict."""
    import seqio

    import dsbs_jax.tasks  # noqa: F401 - registers the tasks
    from dsbs_jax.data.vocab import get_vocabulary

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
        try:
            ds = task.get_dataset(None, split=split, shuffle=False)
        except (ValueError, KeyError) as e:  # an unknown split or an unprepared dataset
            if type(e).__name__ == "DatasetNotFoundError":
                raise UserError(
                    f"{task_name}: no prepared dataset {task.source.tfds_dataset.name} in "
                    f"{task.source.tfds_dataset.data_dir}; run `dsbs prepare` first"
                ) from None
            raise UserError(f"{task_name} split {split!r}: {str(e).splitlines()[0]}") from None
        shown, li, lt = [], [], []
        for ex in ds.take(max_examples).as_numpy_iterator():
            if len(shown) < n_examples:
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
            "inputs": _length_stats(li, lengths["inputs"]),
            "targets": _length_stats(lt, lengths["targets"]),
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


def print_report(r: dict) -> None:
    print(f"{r['name']} ({r['kind']}), split {r['split']}, vocabulary {r['vocabulary']}")
    for t, rate in r["tasks"].items():
        c = r["counts"][t]
        dropped = c["source_records"] - c["examples"]
        print(
            f"  {t:<24} rate {rate:<6g} {c['examples']} examples "
            f"({dropped} of {c['source_records']} records left out: unparsed teacher output or no gold label)"
        )
    for t, exs in r["examples"].items():
        print(f"\nexamples of {t}:")
        for ex in exs:
            print(f"  [{ex['id']}]")
            print("    inputs:  " + ex["inputs"].replace("\n", "\n             "))
            print("    targets: " + ex["targets"].replace("\n", "\n             "))
    sl = r["sequence_length"]
    print(f"\ntoken lengths (with EOS); truncated = share longer than {sl}:")
    print(
        f"  {'task':<24} {'feature':<8} {'p50':>5} {'p90':>5} {'p99':>5} {'max':>5} {'truncated':>10}"
    )
    for t, feats in r["lengths"].items():
        for f, s in feats.items():
            print(
                f"  {t:<24} {f:<8} {s['p50']:>5} {s['p90']:>5} {s['p99']:>5} {s['max']:>5} "
                f"{s['truncated']:>10.2%}"
            )
    if r["kind"] == "mixture":
        print(
            f"\ntask shares over {r['task_shares_sample']} drawn examples (seqio sampling, seed 0):"
        )
        for t, share in r["task_shares"].items():
            print(f"  {t:<24} {share:.2%}  (rate {r['tasks'][t] / sum(r['tasks'].values()):.2%})")


def run(args: argparse.Namespace) -> int:
    import dsbs_jax.tasks  # noqa: F401 - registers the tasks
    from dsbs_jax.data import tasks as tasks_lib
    from dsbs_jax.weighting import tasks_and_rates

    if args.data_dir and not os.path.isdir(args.data_dir):
        raise UserError(f"{args.data_dir}: no such directory")
    tasks_and_rates(args.name)  # an unknown name: one line
    tasks_lib.bind_tasks(args.name, args.data_dir)
    result = inspect(
        args.name, args.split, args.examples, parse_lengths(args.sequence_length), args.max_examples
    )
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0
