"""The paper's one equation, in one place: `alpha * L_label + (1 - alpha) * L_rationale`.

The path of alpha through the stack, each step a function here:
- `dsbs_rates(alpha)`: the mixture rates of `DS_dsbs` (label alpha, rationale 1 - alpha);
  `data.tasks` registers the mixtures with them.
- `tasks_and_rates(name)`: a registered mixture's tasks and rates, normalised to sum to 1.
- `task_weights(rates, weighting)`: the loss weight each task's tokens carry
  (`decoder_loss_weights`, written by the feature converter): the rate under `exact`, 1 under
  `sampling` (T5X's: rates set how often each task is drawn, so weights hold in expectation).
- `weighted_loss(...)`: the loss from per-token losses: under `exact`, the sum over tasks of
  weight x (mean token loss of that task in the batch); under `sampling`, the mean token loss.

The native trainer (`train.input_pipeline`, `train.step`) and the T5X backend (`t5x_backend`)
both use these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import seqio

from dsbs_jax.errors import UserError

WEIGHTINGS = ("exact", "sampling")


def check_weighting(weighting: str) -> None:
    """One line naming the known weightings, for an unknown one."""
    if weighting not in WEIGHTINGS:
        raise UserError(f"LOSS_WEIGHTING must be one of {WEIGHTINGS}, got {weighting!r}")


def dsbs_rates(alpha: float) -> tuple[float, float]:
    """The rates of a dsbs mixture's label and rationale tasks."""
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    return alpha, 1.0 - alpha


def tasks_and_rates(name: str) -> tuple[list[seqio.Task], list[float]]:
    """The tasks of a mixture (or a task alone) with their rates, normalised to sum to 1."""
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError:
        known = ", ".join(
            sorted(seqio.MixtureRegistry.names()) + sorted(seqio.TaskRegistry.names())
        )
        raise UserError(f"unknown task or mixture {name!r}; registered: {known}") from None
    if isinstance(provider, seqio.Mixture):
        tasks = list(provider.tasks)
        rates = [float(provider.get_rate(t)) for t in tasks]
    else:
        tasks, rates = [provider], [1.0]
    total = sum(rates)
    if total <= 0:
        raise UserError(f"mixture {name!r} has no positive rate")
    return tasks, [r / total for r in rates]


def task_weights(rates: Sequence[float], weighting: str) -> list[float]:
    """The per-token loss weight of each task: its rate (`exact`) or 1 (`sampling`)."""
    check_weighting(weighting)
    return [float(r) for r in rates] if weighting == "exact" else [1.0] * len(rates)


def weighted_loss(
    token_loss: jax.Array,
    weights: jax.Array,
    task_ids: jax.Array,
    num_tasks: int,
    weighting: str = "exact",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss and per-task metrics (mean token loss and token count of each task).

    `weights` are the per-token `decoder_loss_weights` (0 on padding), `task_ids` the 1-based
    task of each token (0 on padding)."""
    check_weighting(weighting)
    aux = {}
    total = jnp.zeros((), jnp.float32)
    for t in range(1, num_tasks + 1):
        mask = (task_ids == t).astype(jnp.float32)
        n = mask.sum()
        aux[f"task_{t}/loss"] = (token_loss * mask).sum() / jnp.maximum(n, 1.0)
        aux[f"task_{t}/tokens"] = n
        if weighting == "exact":
            total = total + (token_loss * weights * mask).sum() / jnp.maximum(n, 1.0)
    if weighting == "sampling":
        total = (token_loss * weights).sum() / jnp.maximum((weights > 0).sum(), 1)
    return total, aux
