"""Cross-entropy with per-token weights, per-task means, and an optional z-loss.

`exact` weighting: sum over tasks t of w_t * (mean token loss of task t in the batch), where w_t
is the task's rate carried per token in `decoder_loss_weights` (the paper's alpha-weighted sum).
`sampling` weighting: the weighted mean token loss over all tokens (every weight 1: the rates
already acted when examples were drawn).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

WEIGHTINGS = ("exact", "sampling")


def token_losses(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0, plain: bool = False
) -> jax.Array:
    """Per-token cross entropy (float32), plus z_loss * log(Z)^2 when z_loss > 0.

    plain=False (the CPU kernel): its gradient is written out (softmax * (1 + 2 z_loss log Z) -
    one_hot, times the incoming gradient) as one elementwise pass over the logits: autodiff's
    version keeps a copy of exp(logits - max) from the forward and scatters the target gradient,
    two more passes over [tokens, vocab] (the largest activation of a small model).
    plain=True: the same function under JAX's autodiff, the target logit picked by a one-hot
    product, which stays local when the vocabulary is split over 'model' (a gather or scatter
    along a sharded vocabulary would move the logits between devices)."""
    logits = logits.astype(jnp.float32)
    if not plain:
        return _token_losses(logits, targets, float(z_loss))
    log_z = jax.nn.logsumexp(logits, axis=-1)
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    loss = log_z - jnp.sum(one_hot * logits, axis=-1)
    return loss + z_loss * jnp.square(log_z) if z_loss else loss


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _token_losses(logits: jax.Array, targets: jax.Array, z_loss: float) -> jax.Array:
    return _token_losses_fwd(logits, targets, z_loss)[0]


def _token_losses_fwd(logits, targets, z_loss):
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = log_z - target_logit
    if z_loss:
        loss = loss + z_loss * jnp.square(log_z)
    return loss, (logits, targets, log_z)


def _token_losses_bwd(z_loss, res, g):
    logits, targets, log_z = res
    scale = g * (1.0 + 2.0 * z_loss * log_z) if z_loss else g
    # Per-token values computed once: XLA would otherwise recompute g's producers (the task
    # weighting) for every vocabulary entry inside the [tokens, vocab] loop.
    scale, g, log_z = jax.lax.optimization_barrier((scale, g, log_z))
    grad = scale[..., None] * jnp.exp(logits - log_z[..., None])
    # - g at each target: a scatter of one value per token (cheaper than a compare with the
    # target in every vocabulary entry of the loop above).
    index = jnp.meshgrid(*(jnp.arange(n) for n in targets.shape), indexing="ij")
    return grad.at[(*index, targets)].add(-g), None


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


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
