"""The network's dropout plan: which masks it draws, how, and their shapes.

T5X's dropout, drawn in fewer random calls. Each stack draws the random bits of all its dropout
masks with one `jax.random.bits` call (flax's `nn.Dropout` draws each mask with its own
`make_rng` fold-in and threefry call: 24 small threefry loops per step of a 2+2-layer model on
CPU). The draw is [batch, words]: each mask takes its columns, so the bits shard over 'data'
like the activations (with JAX's partitionable threefry every device draws only its own rows; a
flat draw cut into masks would have to be moved between devices). The masks keep T5X's shapes
and rate: broadcast over the length axis ([b, 1, features]) except the encoder's final dropout,
which is drawn by itself (`whole_mask`), and attention dropout broadcast over queries (applied to
the values, `t5.MultiHeadAttention`: the same product). The random streams differ from flax's
`nn.Dropout`. The plan runs on every platform; on a TPU slice it costs 18 MiB a device (T5 v1.1
base, docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from dsbs_jax.model.t5 import T5Config

Array = jax.Array


def draw_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """uint32 random bits of `shape`."""
    return jax.random.bits(key, shape, jnp.uint32)


def keep_mask(bits: Array, rate: float) -> Array:
    """True where a unit is kept: P(bits >= rate * 2^32) = 1 - rate."""
    return bits >= np.uint32(min(round(rate * 2.0**32), 2**32 - 1))


def apply_keep(x: Array, keep: Array, rate: float) -> Array:
    """Inverted dropout with a boolean keep mask broadcastable to x (as `nn.Dropout`)."""
    return jax.lax.select(
        jnp.broadcast_to(keep, x.shape), x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x)
    )


def split_masks(bits: Array | None, shapes: Sequence[tuple[int, ...]], rate: float):
    """Keep masks of the given shapes ([batch, ...] each) cut in order from the columns of a
    [batch, words] uint32 array (None: no dropout)."""
    if bits is None:
        return [None] * len(shapes)
    out, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape[1:]))
        out.append(keep_mask(bits[:, start : start + n].reshape(shape), rate))
        start += n
    if start != bits.shape[1]:
        raise ValueError(f"dropout bits: {bits.shape[1]} words per example for {start} units")
    return out


def num_words(shapes: Sequence[tuple[int, ...]]) -> int:
    """Words per example of masks with these [batch, ...] shapes."""
    return sum(int(np.prod(s[1:])) for s in shapes)


def draw_rows(key: Array, batch: int, words: int) -> Array:
    """[batch, words] uint32 bits, laid out along the batch like the activations."""
    bits = draw_bits(key, (batch, words))
    return nn.with_logical_constraint(bits, ("batch", None))


def apply(x: Array, keep: Array | None, rate: float) -> Array:
    """x with dropout under `keep` (x itself when keep is None: no dropout)."""
    return x if keep is None else apply_keep(x, keep, rate)


def encoder_layer_shapes(cfg: T5Config, batch: int, length: int) -> list[tuple[int, ...]]:
    """Dropout mask shapes of one encoder layer, in the order the layer uses them."""
    d, h, m = cfg.emb_dim, cfg.num_heads, cfg.mlp_dim
    return [(batch, length, h), (batch, 1, d), (batch, 1, m), (batch, 1, d)]


def decoder_layer_shapes(
    cfg: T5Config, batch: int, length: int, enc_length: int
) -> list[tuple[int, ...]]:
    """Dropout mask shapes of one decoder layer, in the order the layer uses them."""
    d, h, m = cfg.emb_dim, cfg.num_heads, cfg.mlp_dim
    return [(batch, length, h), (batch, 1, d), (batch, enc_length, h), (batch, 1, d),
            (batch, 1, m), (batch, 1, d)]  # fmt: skip


def layer_masks(module: nn.Module, bits, shapes, deterministic: bool) -> list[Array | None]:
    """The keep masks of `shapes` from `bits` (drawn here if None and dropout is on)."""
    rate = module.config.dropout_rate
    if deterministic or rate == 0.0:
        return [None] * len(shapes)
    if bits is None:
        bits = draw_rows(module.make_rng("dropout"), shapes[0][0], num_words(shapes))
    return split_masks(bits, shapes, rate)


def stack_bits(module: nn.Module, batch: int, sizes: Sequence[int], deterministic: bool):
    """One [batch, sum(sizes)] uint32 draw for all of a stack's dropout masks, cut into
    [batch, n] column blocks of `sizes` words per example (or Nones)."""
    if deterministic or module.config.dropout_rate == 0.0:
        return [None] * len(sizes)
    bits = draw_rows(module.make_rng("dropout"), batch, sum(sizes))
    out, start = [], 0
    for n in sizes:
        out.append(bits[:, start : start + n])
        start += n
    return out


def whole_mask(module: nn.Module, shape: tuple[int, ...], deterministic: bool):
    """A keep mask drawn by itself at its own shape (None without dropout).

    For the encoder's final dropout, [batch, length, embed] (T5X does not broadcast it over the
    length): more words than all the other masks of the stack together. Cut from the stack's
    draw, it kept 92 MiB a device more live on a TPU (T5 v1.1 base, batch 256 of 512/128, data
    4 x model 4; docs/scaling.md); drawn at its own shape, all of dropout costs 18 MiB there."""
    if deterministic or module.config.dropout_rate == 0.0:
        return None
    return keep_mask(draw_bits(module.make_rng("dropout"), shape), module.config.dropout_rate)
