"""Runs a sweep to the end: in this process, or in worker processes (`--workers N`)."""

from __future__ import annotations

from collections.abc import Callable

from dsbs_jax.experiments import workers
from dsbs_jax.experiments.config import SweepConfig
from dsbs_jax.experiments.sweep import Sweep, describe
from dsbs_jax.report import results as results_lib


def run_sweep(
    config: SweepConfig, log: Callable[[str], None] = print
) -> list[results_lib.RunResult]:
    """Runs every planned run not yet in the results file; returns all finished runs.

    With `workers` > 1 the runs go to that many worker processes, each claiming the next
    unclaimed run; every run is seeded on its own, so which process runs it does not change its
    result."""
    sweep = Sweep(config, log)
    sweep.setup()
    plans = sweep.plans()
    todo = sweep.todo(plans)
    log(describe(sweep, plans, todo))
    if config.workers > 1 and len(todo) > 1:
        workers.run_in_workers(config, min(config.workers, len(todo)), log)
    else:
        sweep.run_plans(todo, len(plans))
    return results_lib.read_results(sweep.out)
