"""Random parameters in the network's tree, for the checkpoint-format tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax.model.t5 import T5Config, Transformer


def random_params(config: T5Config, seed: int = 0) -> dict:
    """Random numpy parameters in the network's tree (shapes from eval_shape; nothing compiles)."""
    enc = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(
        lambda r: Transformer(config).init(r, enc, enc, enc, enable_dropout=False)["params"],
        jax.random.PRNGKey(0),
    )
    rng = np.random.default_rng(seed)

    def draw(s):
        if len(s.shape) == 1:  # norm scales
            return (1.0 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        return (rng.standard_normal(s.shape) * s.shape[0] ** -0.5).astype(np.float32)

    return jax.tree.map(draw, nn.meta.unbox(shapes))
