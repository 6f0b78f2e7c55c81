"""The quickstart's budgets: the built-in task's sizes and difficulty, and the sweep over it.

`dsbs quickstart` runs `make_builtin_data` (experiments.builtin_data), then the sweep with these
settings; its flags override the sweep's. Each budget names a model gin (gin_configs/models/).
"""

from __future__ import annotations

import os


def default_workers() -> int:
    """Worker processes for the quickstart's runs: one per core, at least 2, at most 8.

    Each worker is pinned to one core and runs XLA on one thread (`workers.worker_command`): a
    student this small gains little from a second thread per step (about 10%), so two one-thread
    runs side by side finish a sweep sooner (1.65x unpinned, more pinned; docs/quickstart.md).
    Any count of 2 or more gives the same table; `--workers 1` runs in this process with
    multi-threaded XLA, which rounds differently. Each worker holds about 1.2 GB of host memory,
    hence the cap."""
    # The cores this process may use (a container or `taskset` may allow fewer than the
    # machine has): the workers are pinned to these, one each.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min(cores or 1, 8))


# What each budget trains. `default` fits in 10 minutes on 2 CPU cores end to end (measured in
# docs/quickstart.md); its students are under-trained, see there.
BUDGETS: dict[str, dict] = {
    "default": {
        "sizes": {"train": 1000, "validation": 200, "test": 2000},
        "difficulty": "easy",
        "sweep": {
            "methods": ("finetune", "distill", "dsbs"),
            "fractions": (25.0, 50.0, 100.0),
            "seeds": 3,
            "steps": 1000,
            "batch_size": 8,
            "model": "quickstart",
            "learning_rate": 3e-3,
            "test_examples": 2000,
            "score_rationale": False,
            "workers": default_workers(),
        },
    },
    "full": {
        "sizes": {"train": 4000, "validation": 500, "test": 500},
        "difficulty": "default",
        "sweep": {
            "methods": ("finetune", "distill", "distill_matched", "dsbs"),
            "fractions": (12.5, 25.0, 50.0, 100.0),
            "seeds": 3,
            "steps": 2000,
            "batch_size": 32,
            "model": "full",
            "learning_rate": 2e-3,
            "test_examples": 500,
            "score_rationale": True,
        },
    },
}
