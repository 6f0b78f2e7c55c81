"""Cross-entropy with per-token weights, per-task means, and an optional z-loss.

`exact` weighting: sum over tasks t of w_t * (mean token loss of task t in the batch), where w_t
is the task's rate carried per token in `decoder_loss_weights` (the paper's alpha-weighted sum).
`sampling` weighting: the weighted mean token loss over all tokens (every weight 1: the rates
already acted when examples were drawn).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("exact", "sampling")


def token_losses(logits: jax.Array, targets: jax.Array, z_loss: float = 0.0) -> jax.Array:
    """Per-token cross entropy (float32), plus z_loss * log(Z)^2 when z_loss > 0."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = log_z - target_logit
    if z_loss:
        loss = loss + z_loss * jnp.square(log_z)
    return loss


def weighted_loss(
    token_loss: jax.Array,
    weights: jax.Array,
    task_ids: jax.Array,
    num_tasks: int,
    weighting: str = "exact",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss and per-task metrics (mean token loss and token count of each task)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
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
