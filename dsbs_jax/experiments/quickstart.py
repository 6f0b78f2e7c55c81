"""The quickstart's budgets: the built-in task's sizes and difficulty, and the sweep over it.

`dsbs quickstart` runs `make_builtin_data` (experiments.builtin_data), then the sweep with these
settings; its flags override the sweep's. Each budget names a model gin (gin_configs/models/).
"""

from __future__ import annotations

# What each budget trains. `default` fits in 10 minutes on 2 CPU cores end to end (9.5 measured,
# docs/quickstart.md, so there is no room for more steps there); its students are under-trained,
# see there. `--workers 2` runs two runs side by side; on this shared 2-core machine it was not
# faster, so the default is one process.
BUDGETS: dict[str, dict] = {
    "default": {
        "sizes": {"train": 1000, "validation": 200, "test": 1000},
        "difficulty": "easy",
        "sweep": {
            "methods": ("finetune", "distill", "dsbs"),
            "fractions": (25.0, 50.0, 100.0),
            "seeds": 3,
            "steps": 1000,
            "batch_size": 8,
            "model": "quickstart",
            "learning_rate": 3e-3,
            "test_examples": 1000,
            "score_rationale": False,
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
