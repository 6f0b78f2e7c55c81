"""`dsbs sweep TASK --data_dir DIR --out DIR [--methods ...] [--fractions ...] [--seeds N] ...`.

Trains every method at every training-set fraction and seed with the same model and budget,
scores each on the test split against gold, and writes OUT/report.md, OUT/table.md and
OUT/accuracy.png. Rerunning the same command resumes: finished runs are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from dsbs_jax.errors import UserError
from dsbs_jax.experiments.config import SELECTIONS
from dsbs_jax.experiments.config import SweepConfig as SweepConfigFields

if TYPE_CHECKING:
    from dsbs_jax.experiments.config import SweepConfig


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _lengths(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if (
            not sep
            or k.strip() not in ("inputs", "labels", "rationales")
            or not v.strip().isdigit()
        ):
            raise argparse.ArgumentTypeError(
                f"expected inputs=N,labels=N,rationales=N, got {text!r}"
            )
        out[k.strip()] = int(v)
    if set(out) != {"inputs", "labels", "rationales"}:
        raise argparse.ArgumentTypeError("give all three: inputs=N,labels=N,rationales=N")
    return out


def add_sweep_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The budget and method flags (shared with `dsbs quickstart`); the help shows `defaults`
    (the command's own), else SweepConfig's."""
    d = {f.name: f.default for f in dataclasses.fields(SweepConfigFields)} | (defaults or {})

    def one(x) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    def show(name: str) -> str:
        v = d[name]
        return ",".join(one(x) for x in v) if isinstance(v, tuple) else one(v)

    parser.add_argument(
        "--methods",
        type=_names,
        help="comma-separated: finetune, distill, dsbs, distill_matched "
        f"(default {show('methods')})",
    )
    parser.add_argument(
        "--fractions", type=_floats, help=f"training-set percentages (default {show('fractions')})"
    )
    parser.add_argument(
        "--seeds", type=int, help=f"seeds per method and fraction (default {show('seeds')})"
    )
    parser.add_argument(
        "--steps", type=int, help=f"optimizer steps per run (default {show('steps')})"
    )
    parser.add_argument(
        "--batch_size", type=int, help=f"inputs per batch (default {show('batch_size')})"
    )
    parser.add_argument(
        "--model",
        help="student: a model gin of the package (quickstart, micro, full, t5_1_1_tiny, "
        f"t5_1_1_small, ...) or FILE.gin (default {show('model')})",
    )
    parser.add_argument(
        "--learning_rate", type=float, help=f"AdamW peak rate (default {show('learning_rate')})"
    )
    parser.add_argument(
        "--compute_matched",
        action="store_true",
        help="add distill_matched: distillation with twice the steps (dsbs's sequence count)",
    )
    parser.add_argument(
        "--score_rationale",
        action="store_true",
        help="also decode `explain:` and score the answer read from the generated rationale",
    )
    parser.add_argument("--test_examples", type=int, help="score the first N test examples")
    parser.add_argument(
        "--score_split",
        choices=("test", "validation"),
        help="the split the table scores: validation while choosing settings, then test "
        f"(default {show('score_split')})",
    )
    parser.add_argument(
        "--select",
        choices=SELECTIONS,
        help="which parameters are scored: the last step's, or those with the best direct-answer "
        "accuracy (best_validation) or the lowest gold-answer loss (best_validation_loss) on "
        f"validation, checked every --select_every steps (default {show('select')})",
    )
    parser.add_argument(
        "--select_every",
        type=int,
        help=f"steps between validation checks (default {show('select_every')})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes running runs side by side, each pinned to one core with one "
        "XLA thread (Linux; 1: this process, XLA on every core) "
        f"(default {show('workers')})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="a registered task card (arith, svamp, cqa, ...)")
    parser.add_argument(
        "--data_dir",
        help="where `dsbs prepare` wrote the data (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)",
    )
    parser.add_argument("--out", required=True, help="the sweep's folder (resumes if it exists)")
    add_sweep_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--alpha", type=float, default=0.5, help="dsbs label weight")
    parser.add_argument("--warmup_steps", type=int, help="default: 5%% of the steps")
    parser.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    parser.add_argument(
        "--lengths", type=_lengths, help="inputs=N,labels=N,rationales=N (default: from the data)"
    )
    parser.add_argument("--initial_checkpoint", help="start every run from these parameters")
    parser.add_argument("--vocabulary", help="a sentencepiece model (e.g. T5's) for the tasks")


def config_from_args(args: argparse.Namespace, **defaults) -> SweepConfig:
    """A SweepConfig from the flags; flags left unset take `defaults`, then the dataclass's."""
    from dsbs_jax.experiments.config import SweepConfig

    values = dict(defaults)
    for name in (
        "methods",
        "fractions",
        "seeds",
        "steps",
        "batch_size",
        "model",
        "learning_rate",
        "test_examples",
        "score_split",
        "warmup_steps",
        "lengths",
        "workers",
        "select",
        "select_every",
    ):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    methods = tuple(values.get("methods", ("finetune", "distill", "dsbs")))
    if getattr(args, "compute_matched", False) and "distill_matched" not in methods:
        methods += ("distill_matched",)
    values["methods"] = methods
    if getattr(args, "score_rationale", False):
        values["score_rationale"] = True
    for name in ("seed", "alpha", "weight_decay", "initial_checkpoint", "vocabulary"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return SweepConfig(**values)


def run(args: argparse.Namespace) -> int:
    from dsbs_jax.data.paths import DATA_DIR_ENV, env_data_dir
    from dsbs_jax.experiments.runner import run_sweep
    from dsbs_jax.report.report import write_report

    data_dir = args.data_dir or env_data_dir()
    if not data_dir:
        raise UserError(f"no data dir: pass --data_dir or set {DATA_DIR_ENV} (or TFDS_DATA_DIR)")
    config = config_from_args(args, task=args.task, data_dir=data_dir, out=args.out)
    run_sweep(config, log=lambda s: print(s, flush=True))
    paths = write_report(args.out)
    print(open(paths["table"], encoding="utf-8").read())
    print(f"report: {paths['report']}")
    if "plot" in paths:
        print(f"plot: {paths['plot']}")
    return 0
