"""`dsbs pretrain` as one function: T5's span-corruption pretraining with the native trainer.

`pretrain(...)` runs `trainer.train` under `models/<model>.gin` + `runs/pretrain.gin`, with the
corpus, vocabulary, lengths, steps and batch size bound as that gin file's macros, and the
caller's own `--gin.NAME=value` bindings last (they win). The run is an ordinary `dsbs train`
run: `MODEL_DIR/config.gin`, `checkpoint_<step>/`, `train/metrics.jsonl`, and a second call
with the same MODEL_DIR resumes it. Its checkpoint is an INITIAL_CHECKPOINT_PATH (or a sweep's
`--initial_checkpoint`) for a student of the same model gin and vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

from dsbs_jax.data import pretrain as pretrain_data
from dsbs_jax.errors import UserError
from dsbs_jax.train import gin_utils, trainer
from dsbs_jax.train import hooks as hooks_lib

RUN_GIN = "runs/pretrain.gin"
DEFAULT_MODEL = "quickstart"  # the sweep's default student, so its checkpoint starts a sweep


@dataclasses.dataclass
class PretrainResult:
    """Where the run ended and how fast it trained (after the first step, which compiles)."""

    step: int
    loss: float | None
    model_dir: str
    checkpoint: str
    seconds: float
    sequences_per_second: float
    target_tokens_per_second: float


class Throughput(hooks_lib.Hook):
    """Counts sequences and target tokens from the end of the first step (which compiles) to
    the end of the last one (waiting for the device)."""

    every = 1

    def __init__(self) -> None:
        self.t0: float | None = None
        self.sequences = 0
        self.target_tokens = 0.0
        self.seconds = 0.0

    def on_step(self, state: hooks_lib.RunState) -> None:
        if self.t0 is None:
            import jax

            jax.block_until_ready(state.params)
            self.t0 = time.perf_counter()
            return
        self.sequences += state.batch_size
        self.target_tokens += state.target_tokens

    def on_end(self, state: hooks_lib.RunState) -> None:
        if self.t0 is not None:
            import jax

            jax.block_until_ready(state.params)
            self.seconds = time.perf_counter() - self.t0


def parse_lengths(text: str) -> dict[str, int]:
    """`512` or `512,114` as TASK_FEATURE_LENGTHS (the targets length follows from the inputs')."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise UserError(f"--lengths {text!r}: expected INPUTS or INPUTS,TARGETS, e.g. 512,114")
    lengths = pretrain_data.pretrain_lengths(values[0])
    if len(values) == 2:
        lengths["targets"] = values[1]
    return lengths


def pretrain(
    model_dir: str,
    vocabulary_path: str,
    *,
    steps: int,
    batch_size: int,
    text_files: Sequence[str] | None = None,
    jsonl_files: Sequence[str] | None = None,
    jsonl_field: str = "text",
    model: str = DEFAULT_MODEL,
    lengths: dict[str, int] | None = None,
    gin_bindings: Sequence[str] = (),
) -> PretrainResult:
    """Pretrains `model` (a model gin's name or a .gin path) with span corruption on text files
    or JSON-lines files; returns where it ended and its throughput.

    `lengths`: TASK_FEATURE_LENGTHS (default T5's 512 / 114). `gin_bindings`: more
    `NAME = value` bindings, applied last. Bad input is a one-line UserError, raised before
    MODEL_DIR is touched."""
    lengths = dict(lengths or pretrain_data.pretrain_lengths())
    pretrain_data.check_lengths(lengths)
    for name, value in (("--steps", steps), ("--batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    bindings = [
        f"MODEL_DIR = {os.fspath(model_dir)!r}",
        f"VOCABULARY_PATH = {os.fspath(vocabulary_path)!r}",
        f"TRAIN_STEPS = {steps}",
        f"BATCH_SIZE = {batch_size}",
        f"TASK_FEATURE_LENGTHS = {lengths!r}",
    ]
    if text_files:
        bindings.append(f"PRETRAIN_TEXT_FILES = {[os.fspath(f) for f in text_files]!r}")
    if jsonl_files:
        bindings.append(f"PRETRAIN_JSONL_FILES = {[os.fspath(f) for f in jsonl_files]!r}")
        bindings.append(f"PRETRAIN_JSONL_FIELD = {jsonl_field!r}")
    gin_utils.parse_gin([gin_utils.model_gin(model), RUN_GIN], [*bindings, *gin_bindings])
    throughput = Throughput()
    result = trainer.train(hooks=[throughput])
    seconds = max(throughput.seconds, 1e-9)
    return PretrainResult(
        step=result.step,
        loss=result.train_metrics.get("loss"),
        model_dir=result.model_dir,
        checkpoint=os.path.join(result.model_dir, f"checkpoint_{result.step}"),
        seconds=throughput.seconds,
        sequences_per_second=throughput.sequences / seconds,
        target_tokens_per_second=throughput.target_tokens / seconds,
    )
