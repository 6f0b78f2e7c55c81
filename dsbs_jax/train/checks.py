"""The checks of a run's settings, made before anything is written to MODEL_DIR: types and sizes
of the gin settings, the split, the feature lengths against the data, MODEL_DIR itself and the
step it is trained to. What a run directory holds is `dsbs_jax.run_dir`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from dsbs_jax.errors import UserError
from dsbs_jax.weighting import tasks_and_rates

log = logging.getLogger("dsbs.train")


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
