"""Per-token cross-entropy with an optional z-loss (the per-task weighting is `dsbs_jax.weighting`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsbs_jax.model import cpu_kernels


def token_losses(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0, plain: bool = True
) -> jax.Array:
    """Per-token cross entropy (float32), plus z_loss * log(Z)^2 when z_loss > 0.

    plain=True (the default): JAX's autodiff, the target logit picked by a one-hot product, which
    stays local when the vocabulary is split over 'model' (a gather or scatter along a sharded
    vocabulary would move the logits between devices). plain=False (`kernels='cpu'`): the same
    function with its gradient written out (`model.cpu_kernels.token_losses`)."""
    logits = logits.astype(jnp.float32)
    if not plain:
        return cpu_kernels.token_losses(logits, targets, float(z_loss))
    log_z = jax.nn.logsumexp(logits, axis=-1)
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    loss = log_z - jnp.sum(one_hot * logits, axis=-1)
    return loss + z_loss * jnp.square(log_z) if z_loss else loss
