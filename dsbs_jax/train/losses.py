"""Per-token cross-entropy with an optional z-loss (the per-task weighting is `dsbs_jax.weighting`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def token_losses(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0, plain: bool = True
) -> jax.Array:
    """Per-token cross entropy (float32), plus z_loss * log(Z)^2 when z_loss > 0.

    plain=False (the CPU kernel, `kernels='cpu'`): its gradient is written out (softmax * (1 + 2 z_loss log Z) -
    one_hot, times the incoming gradient) as one elementwise pass over the logits: autodiff's
    version keeps a copy of exp(logits - max) from the forward and scatters the target gradient,
    two more passes over [tokens, vocab] (the largest activation of a small model).
    plain=True (the default): the same function under JAX's autodiff, the target logit picked by a one-hot
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
