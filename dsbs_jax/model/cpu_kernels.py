"""CPU kernels: hand-written backward passes for the CPU train step (`T5Config.kernels='cpu'`).

The same functions as the network's plain flax layers and `train.losses.token_losses` (values and
gradients equal, tests/test_fast_paths.py), with backward passes laid out for XLA's CPU dots:
each weight gradient is (small operand)^T @ (large operand) with the large one in its natural
layout, and the gated MLP's wi_0 and wi_1 act as one [embed, 2 * mlp] product. On a 2-core CPU
they make the train step 1.36x faster at tiny and 1.26x at small (docs/performance.md). On TPU
and GPU the plain network runs (`kernels` 'auto' picks it there): these layouts do not shard the
way T5X's do. A reader of the network (`dsbs_jax.model.t5`) can skip this module.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax.model import dropout

Array = jax.Array


@jax.custom_vjp
def matmul(x: Array, kernel: Array) -> Array:
    """x [..., i] @ kernel [i, o], with the kernel gradient taken as (x^T materialised) @ dy:
    autodiff's version transposes dy instead, the large operand for the logits layer."""
    return x @ kernel


def _matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, dy):
    x, kernel = res
    return dy @ kernel.T, tdot(x, dy)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


_SQRT_2_OVER_PI = np.sqrt(2 / np.pi)


def gelu_parts(a: Array) -> tuple[Array, Array]:
    """tanh-GELU of a (the same expression as `jax.nn.gelu(approximate=True)`) and its slope."""
    c = _SQRT_2_OVER_PI.astype(a.dtype)
    a2 = a * a
    t = jnp.tanh(c * (a + 0.044715 * (a2 * a)))
    cdf = 0.5 * (1.0 + t)
    slope = cdf + a * (0.5 * (1.0 - t * t)) * c * (1.0 + 3 * 0.044715 * a2)
    return a * cdf, slope


def tdot(a: Array, b: Array) -> Array:
    """a^T @ b over all leading axes, a [..., i] and b [..., o] -> [i, o]. The transpose of a
    (the small operand here) is materialised first, so XLA neither transposes b nor fuses b's
    elementwise producer into a transposed copy."""
    a2 = a.reshape(-1, a.shape[-1])
    return jax.lax.optimization_barrier(a2.T) @ b.reshape(-1, b.shape[-1])


def _constrain_mlp(h: Array) -> Array:
    """h laid out [batch, length, mlp] (as the network's MLP activations)."""
    return nn.with_logical_constraint(h, ("batch", "length", "mlp")) if h.ndim == 3 else h


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def gated_gelu_mlp(x, w0, w1, wo, keep, rate):
    """dropout(gelu(x @ w0) * (x @ w1)) @ wo; keep (bool, broadcastable to [..., mlp]) or None.

    The same function as the generic `MlpBlock` path, with its own backward: autodiff's version
    makes XLA fuse the GELU derivative into transposed copies of the [tokens, mlp] gradients
    (4-5 ms each at tiny's shape on CPU); here each weight gradient is (small operand)^T @
    (large operand) with the large one in its natural layout, and wi_0, wi_1 act as one
    [embed, 2 * mlp] matrix (one product each way; ~10% off a small-config step)."""
    return _gated_gelu_mlp_fwd(x, w0, w1, wo, keep, rate)[0]


def _gated_gelu_mlp_fwd(x, w0, w1, wo, keep, rate):
    # wi_0 and wi_1 side by side: one [embed, 2 * mlp] product (the parameters stay two).
    a01 = x @ jnp.concatenate([w0, w1], axis=1)
    a0, a1 = a01[..., : w0.shape[1]], a01[..., w0.shape[1] :]
    g, _ = gelu_parts(a0)
    h = _constrain_mlp(dropout.apply(g * a1, keep, rate))
    return h @ wo, (x, a0, a1, w0, w1, wo, keep)


def _gated_gelu_mlp_bwd(rate, res, dy):
    x, a0, a1, w0, w1, wo, keep = res
    g, slope = gelu_parts(a0)
    h = dropout.apply(g * a1, keep, rate)
    dh = dropout.apply(dy @ wo.T, keep, rate)
    da01 = jax.lax.optimization_barrier(jnp.concatenate([dh * a1 * slope, dh * g], axis=-1))
    dx = da01 @ jnp.concatenate([w0, w1], axis=1).T
    dw01 = tdot(x, da01)
    m = w0.shape[1]
    return dx, dw01[:, :m], dw01[:, m:], tdot(dy, h).T, None


gated_gelu_mlp.defvjp(_gated_gelu_mlp_fwd, _gated_gelu_mlp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_losses(logits: jax.Array, targets: jax.Array, z_loss: float) -> jax.Array:
    """`train.losses.token_losses` (float32 logits), its gradient written out: softmax * (1 + 2
    z_loss log Z) - one_hot, times the incoming gradient, as one elementwise pass over the logits.
    Autodiff's version keeps a copy of exp(logits - max) from the forward and scatters the target
    gradient: two more passes over [tokens, vocab], the largest activation of a small model."""
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


token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)
