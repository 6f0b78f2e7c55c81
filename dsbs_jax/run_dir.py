"""A run's record: what MODEL_DIR holds and who reads it back.

- `checkpoint_<step>/` folders (ours, orbax; T5X's have the same names): `checkpoint_steps`,
  `step_of`, read by the trainer's checkpoints, the T5X reader and `dsbs export`.
- `config.gin`: written only by a run that trains (`write_config`); `dsbs export` and `dsbs eval`
  read it as the truth about a run, so a run that fails its checks, or changes nothing, never
  touches it.
- `train/metrics.jsonl`: cut back to the resumed step (`truncate_metrics`).

It sits at the top of the package, not in `train/`, because `interop` (the T5X reader) reads the
same layout and `train` loads T5X and Hugging Face checkpoints through `interop`. The checks of a
run's settings before anything is written are `dsbs_jax.train.checks`.
"""

from __future__ import annotations

import json
import os

from dsbs_jax import atomic

CONFIG_FILE = "config.gin"
METRICS_FILE = os.path.join("train", "metrics.jsonl")
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
