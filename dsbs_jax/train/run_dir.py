"""The run's record in MODEL_DIR: settings checked before anything is written, `config.gin`
written only by a run that trains, and `train/metrics.jsonl` cut back to the resumed step.

`dsbs export` and `dsbs eval` read `config.gin` as the truth about a run, so a run that fails
its checks, or changes nothing, never touches it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from dsbs_jax import atomic
from dsbs_jax.errors import UserError
from dsbs_jax.weighting import tasks_and_rates

log = logging.getLogger("dsbs.train")

CONFIG_FILE = "config.gin"
METRICS_FILE = os.path.join("train", "metrics.jsonl")


def require_int(name: str, value: Any, minimum: int | None = 1, allow_none: bool = False) -> None:
    """Refuses a setting that is not an integer (a gin value of the wrong type) or too small."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")


def require_number(name: str, value: Any, allow_none: bool = False) -> None:
    """Refuses a setting that is not a finite number."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")


def check_feature_lengths(lengths: Any, name: str = "TASK_FEATURE_LENGTHS") -> None:
    """`{'inputs': N, 'targets': M}` with positive integers."""
    if not isinstance(lengths, Mapping):
        raise UserError(
            f"{name} must be a dict like {{'inputs': 512, 'targets': 256}}, got {lengths!r}"
        )
    for key in ("inputs", "targets"):
        if key not in lengths:
            raise UserError(f"{name} has no {key!r} length (got {dict(lengths)!r})")
        require_int(f"{name}[{key!r}]", lengths[key])


CHECKPOINT_PREFIX = "checkpoint"  # `checkpoint_<step>`: ours (orbax) and T5X's alike


def checkpoint_steps(model_dir: str | os.PathLike, holding: str | None = None) -> list[int]:
    """Steps of the `checkpoint_<step>` folders in model_dir, newest first; with `holding`,
    only those that hold that entry (`params` for ours)."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []
    steps = []
    for name in os.listdir(model_dir):
        head, _, tail = name.partition("_")
        folder = os.path.join(model_dir, name)
        if head == CHECKPOINT_PREFIX and tail.isdigit() and os.path.isdir(folder):
            if holding is None or os.path.exists(os.path.join(folder, holding)):
                steps.append(int(tail))
    return sorted(steps, reverse=True)


def step_of(checkpoint_folder: str | os.PathLike) -> int | None:
    """The step of a `checkpoint_<step>` folder's name, or None."""
    head, _, tail = os.path.basename(os.path.normpath(checkpoint_folder)).partition("_")
    return int(tail) if head == CHECKPOINT_PREFIX and tail.isdigit() else None


def check_model_dir(model_dir: Any) -> str:
    """MODEL_DIR must be a directory this process can write, or one it can create: checked
    without creating anything (the run creates it once every setting is checked)."""
    if not isinstance(model_dir, (str, os.PathLike)) or not os.fspath(model_dir):
        raise UserError(f"MODEL_DIR must be a path, got {model_dir!r}")
    model_dir = os.fspath(model_dir)
    if "://" in model_dir:  # gs:// and the like: the storage layer says what is wrong
        return model_dir
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError(f"MODEL_DIR {model_dir}: is a file, expected a directory")
    existing = os.path.abspath(model_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"MODEL_DIR {model_dir}: cannot create it ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "not writable"
            if existing == os.path.abspath(model_dir)
            else (f"cannot create it ({existing} is not writable)")
        )
        raise UserError(f"MODEL_DIR {model_dir}: {what}")
    return model_dir


_SPLIT_NAME = re.compile(r"^\s*([A-Za-z0-9_.-]+)")


def check_split(tasks: list, split: Any, name: str = "TRAIN_SPLIT") -> None:
    """The split (before any `[:25%]` slice) must be one that every task's source has."""
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise UserError(f"{name} must be a split name like 'train' or 'train[:25%]', got {split!r}")
    base = _SPLIT_NAME.match(split).group(1)
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy, and only for this check

    try:
        tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        reason = str(e).strip().splitlines()[-1]
        raise UserError(f"{name} {split!r}: not a TFDS split ({reason})") from None
    for task in tasks:
        try:
            known = list(task.source.splits)
        except Exception:  # noqa: BLE001 - a source that cannot list its splits is checked later
            continue
        if known and base not in known:
            raise UserError(
                f"{name} {split!r}: {task.name} has no split {base!r} (it has {', '.join(known)})"
            )


def check_progress(model_dir: str, trained_step: int, train_steps: int) -> None:
    """A run already past TRAIN_STEPS has nothing to do: one line, and nothing is rewritten."""
    if trained_step > train_steps:
        raise UserError(
            f"{model_dir} is already trained to step {trained_step}, past TRAIN_STEPS={train_steps}: "
            f"nothing to train (raise TRAIN_STEPS to continue it, or use a new MODEL_DIR)"
        )


def write_config(model_dir: str, config_str: str, start_step: int, train_steps: int) -> bool:
    """Writes MODEL_DIR/config.gin (atomically) when this run will train; returns whether it did.

    A run that starts at its last step trains nothing, so the record of the run that did stays.
    """
    if start_step >= train_steps and os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        return False
    atomic.write_text_atomic(os.path.join(model_dir, CONFIG_FILE), config_str)
    return True


def truncate_metrics(model_dir: str, step: int) -> int:
    """Drops rows of train/metrics.jsonl past `step` (written before a kill, to be replayed).

    Returns how many rows were dropped; the file is rewritten atomically only when some are.
    """
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    keep = []
    for line in lines:
        try:
            row_step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by a kill
        if isinstance(row_step, int) and row_step <= step:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        atomic.write_text_atomic(path, "".join(f"{line}\n" for line in keep))
    return dropped


def check_train_settings(
    mixture_or_task_name: str,
    task_feature_lengths: Any,
    train_steps: Any,
    batch_size: Any,
    train_split: Any,
    check_lengths: bool = True,
    **more_ints: Any,
) -> None:
    """The trainer's settings, checked before anything is written: names, types and sizes."""
    require_int("TRAIN_STEPS", train_steps)
    require_int("BATCH_SIZE", batch_size)
    check_feature_lengths(task_feature_lengths)
    minimum = {"eval_period": 0, "random_seed": None, "input_threads": 0}
    for name, value in more_ints.items():
        require_int(f"train.{name}", value, minimum.get(name, 1), allow_none=name == "eval_period")
    tasks, _ = tasks_and_rates(mixture_or_task_name)
    check_split(tasks, train_split)
    if check_lengths:
        check_lengths_fit(tasks, task_feature_lengths, train_split)


def check_lengths(mixture_or_task_name: str, task_feature_lengths: Any, train_split: str) -> None:
    """`check_lengths_fit` over the tasks of a mixture or task name."""
    tasks, _ = tasks_and_rates(mixture_or_task_name)
    check_lengths_fit(tasks, task_feature_lengths, train_split)


def check_lengths_fit(
    tasks: list,
    lengths: Mapping[str, int],
    split: str,
    limit: int = 200,
    say: Callable[[str], None] | None = None,
) -> None:
    """Says how many examples (of the first `limit` of each task) TASK_FEATURE_LENGTHS cuts, and
    refuses lengths that cut every one of them."""
    say = say or say_for(True)
    for task in tasks:
        try:
            ds = task.get_dataset(
                sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
            )
            rows = list(ds.take(limit).as_numpy_iterator())
        except Exception:  # noqa: BLE001 - data that cannot be read fails later, in its own words
            continue
        for key in ("inputs", "targets"):
            cut = sum(1 for ex in rows if key in ex and len(ex[key]) > lengths[key])
            if not cut:
                continue
            longest = max(len(ex[key]) for ex in rows if key in ex)
            what = (
                f"{task.name}: {cut} of {len(rows)} {split} examples checked have {key} longer "
                f"than TASK_FEATURE_LENGTHS[{key!r}]={lengths[key]} tokens (longest {longest})"
            )
            if cut == len(rows):
                raise UserError(f"{what}: every one would be cut; raise the length")
            say(f"{what} and are cut")


def say_for(is_main: bool) -> Callable[[str], None]:
    """Prints a line at the default log level (on the main process) and logs it."""

    def say(message: str) -> None:
        log.info(message)
        if is_main:
            print(message, flush=True)

    return say
