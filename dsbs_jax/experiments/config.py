"""What a sweep trains: its settings (`SweepConfig`) and its runs (`Plan`, `plan_runs`).

The budget is the same for every method: STEPS optimizer steps over batches of BATCH inputs.
A dsbs batch carries each of its BATCH inputs twice (`predict:` -> label, `explain:` ->
rationale, loss alpha * L_label + (1 - alpha) * L_rationale, the trainer's `exact` weighting),
packed into one row per input, so it processes 2 x BATCH sequences per step, as the paper's two
forward passes do. The compute-matched baseline `distill_matched` is distillation given the same
number of sequences: twice the steps at the same batch (2 x STEPS x BATCH label sequences, the
same count of sequences and more optimizer updates than dsbs). It cannot match dsbs's target
tokens, which are mostly rationale tokens that a label-only run has no use for; what it
separates is whether dsbs's gain is the extra passes over the inputs or what the rationales say.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dsbs_jax.errors import UserError
from dsbs_jax.names import mixture_or_task_name

METHODS = ("finetune", "distill", "distill_matched", "dsbs")

# Settings that change what a finished run means; a resumed sweep must agree on them.
CORE = (
    "task",
    "steps",
    "batch_size",
    "model",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "lengths",
    "test_examples",
    "score_split",
    "seed",
    "alpha",
    "score_rationale",
    "initial_checkpoint",
    "vocabulary",
    "select",
    "select_every",
)
SELECTIONS = ("last", "best_validation", "best_validation_loss")


@dataclasses.dataclass
class SweepConfig:
    """What a sweep trains and how. `lengths` None: measured from the data (`data.lengths_for`).

    `model`: a model gin of the package (`quickstart`, `micro`, `full`, `t5_1_1_small`, ...) or
    a path to a .gin file."""

    task: str
    data_dir: str
    out: str
    methods: tuple[str, ...] = ("finetune", "distill", "dsbs")
    fractions: tuple[float, ...] = (12.5, 25.0, 50.0, 100.0)
    seeds: int = 3
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    model: str = "quickstart"
    learning_rate: float = 3e-3
    warmup_steps: int | None = None  # default: 5% of steps
    weight_decay: float = 0.0
    lengths: dict[str, int] | None = None  # inputs, labels, rationales
    test_examples: int | None = None  # default: the whole test split
    score_split: str = "test"  # 'validation' while choosing settings (never choose on test)
    score_rationale: bool = False
    alpha: float = 0.5
    initial_checkpoint: str | None = None
    vocabulary: str | None = None
    select: str = "last"  # which parameters are scored: the last, or the best on validation
    # (accuracy, or the gold answers' loss)
    select_every: int = 50  # steps between validation checks (select best_validation*)
    validation_examples: int | None = 200
    workers: int = 1  # processes that run the planned runs side by side (not a core setting)

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.fractions = tuple(float(f) for f in self.fractions)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UserError(f"--methods: unknown {bad}; known: {', '.join(METHODS)}")
        if not self.fractions or any(not 0 < f <= 100 for f in self.fractions):
            raise UserError(f"--fractions {self.fractions}: each must be in (0, 100]")
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 1 or self.workers < 1:
            raise UserError("--seeds, --steps, --batch_size and --workers must be at least 1")
        if self.score_split not in ("test", "validation"):
            raise UserError(f"--score_split {self.score_split!r}: test or validation")
        if self.select not in SELECTIONS:
            raise UserError(f"--select {self.select!r}: one of {', '.join(SELECTIONS)}")
        if self.select_every < 1:
            raise UserError("--select_every must be at least 1")
        if not 0 < self.alpha < 1:
            raise UserError(f"--alpha {self.alpha}: must be in (0, 1)")
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.steps // 20)

    def core(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in CORE}


@dataclasses.dataclass
class Plan:
    """One run: which mixture, how many steps and rows per batch, which training slice."""

    method: str
    fraction: float
    seed: int
    mixture: str
    steps: int
    rows: int
    train_examples: int
    target_length: int
    input_length: int
    pack: bool = False  # dsbs: each example's label and rationale share a packed row

    @property
    def model_dir_parts(self) -> tuple[str, str, str]:
        return (self.method, f"{self.fraction:g}", str(self.seed))


def plan_runs(
    cfg: SweepConfig, dataset: str, dsbs_mixture: str, train_size: int, lengths: dict[str, int]
) -> list[Plan]:
    """Every run, seeds outermost so an interrupted sweep has whole seeds done first."""
    out = []
    for s in range(cfg.seeds):
        for fraction in cfg.fractions:
            n = max(1, round(train_size * fraction / 100))
            for method in cfg.methods:
                steps, pack = cfg.steps, False
                target, inputs = lengths["labels"], lengths["inputs"]
                if method == "finetune":
                    mixture = mixture_or_task_name(dataset, "finetune")
                elif method in ("distill", "distill_matched"):
                    mixture = mixture_or_task_name(dataset, "distill")
                    steps = 2 * cfg.steps if method == "distill_matched" else cfg.steps
                else:
                    # Both tasks of an example are adjacent in the stream (exact weighting), so a
                    # row sized for the pair packs them together: batch_size rows hold about
                    # batch_size examples, and label rows are not padded to the rationale's length.
                    mixture, pack = dsbs_mixture, True
                    target = lengths["labels"] + lengths["rationales"]
                    inputs = 2 * lengths["inputs"]
                out.append(
                    Plan(method, fraction, cfg.seed + s, mixture, steps, cfg.batch_size, n,
                         target, inputs, pack)
                )  # fmt: skip
    return out
