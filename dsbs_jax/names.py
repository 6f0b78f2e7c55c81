"""The names of a dataset's SeqIO tasks and mixtures, made from their parts in one place.

For a dataset DS (a task card's name):
- tasks `DS_label`, `DS_rationale`, `DS_gold_label` (what each one holds: `dsbs_jax.data.tasks`);
- mixtures `DS_finetune`, `DS_distill`, and `DS_dsbs` for the default alpha (the paper's 0.5),
  else `DS_dsbs_a80` (alpha 0.8), `DS_dsbs_a12p5` (0.125).

It imports nothing, so a sweep's plan (`experiments.config`) names its mixtures without JAX or TF.
"""

from __future__ import annotations

DEFAULT_ALPHA = 0.5  # the dsbs label weight: alpha * L_label + (1 - alpha) * L_rationale
TASKS = ("label", "rationale", "gold_label")
MIXTURES = ("finetune", "distill", "dsbs")


def mixture_or_task_name(dataset: str, kind: str, alpha: float | None = None) -> str:
    """The MIXTURE_OR_TASK_NAME of `dataset`'s task or mixture `kind` (TASKS, MIXTURES); `alpha`
    only for `dsbs` (None: the default)."""
    if kind not in TASKS + MIXTURES:
        raise ValueError(f"unknown task or mixture kind {kind!r}")
    if kind != "dsbs":
        if alpha is not None:
            raise ValueError(f"{kind}: alpha is for the dsbs mixture only")
        return f"{dataset}_{kind}"
    if alpha is None or abs(alpha - DEFAULT_ALPHA) < 1e-9:
        return f"{dataset}_dsbs"
    return f"{dataset}_dsbs_a{alpha * 100:g}".replace(".", "p")
