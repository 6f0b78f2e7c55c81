"""`dsbs quickstart [--out DIR] [--budget default|full] [--seed 0]`: the whole method on a CPU.

Generates the built-in arithmetic task, runs stage 1 with the simulated teacher (through the
teach machinery and its parser), prepares the TFDS data, trains a vocabulary, runs the sweep
(fine-tuning, distillation and distilling step-by-step at several data sizes and seeds) and
prints where the report is. Same command and seed: the same table. See docs/quickstart.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from dsbs_jax.commands.sweep import add_sweep_arguments, config_from_args
from dsbs_jax.experiments.quickstart import BUDGETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/quickstart", help="output folder")
    parser.add_argument(
        "--budget", choices=tuple(BUDGETS), default="default", help="run sizes (docs/quickstart.md)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data, teacher and first run seed")
    parser.add_argument(
        "--difficulty", choices=("easy", "default", "hard"), help="the built-in task's preset"
    )
    g = parser.add_argument_group("overrides of the budget's sweep (defaults: --budget default)")
    add_sweep_arguments(g, BUDGETS["default"]["sweep"])


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from dsbs_jax.experiments.builtin_data import make_builtin_data
    from dsbs_jax.experiments.runner import run_sweep
    from dsbs_jax.report.report import write_report

    budget = BUDGETS[args.budget]
    out = os.path.abspath(args.out)

    def log(s: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True)

    # The sweep's settings are checked before anything is written (data_dir comes after).
    config = config_from_args(
        args,
        **budget["sweep"],
        task="arith",
        data_dir="",
        out=os.path.join(out, "sweep"),
        seed=args.seed,
    )
    data_dir, _ = make_builtin_data(
        out,
        budget["sizes"],
        seed=args.seed,
        difficulty=args.difficulty or budget["difficulty"],
        log=log,
    )
    config = dataclasses.replace(config, data_dir=data_dir)
    run_sweep(config, log=log)
    paths = write_report(config.out)
    print()
    print(open(paths["table"], encoding="utf-8").read())
    log(f"report: {paths['report']}")
    if "plot" in paths:
        log(f"plot: {paths['plot']}")
    log(f"TensorBoard: tensorboard --logdir {os.path.join(config.out, 'runs')}")
    return 0
