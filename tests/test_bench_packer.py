"""bench/packer.py: the benchmarks' numpy packer gives fixed-shape, exact batches, and a step
over them compiles once."""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

from dsbs_jax.model.t5 import T5Config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from packer import pack_examples  # noqa: E402

CONFIG = T5Config(
    vocab_size=384,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_dim=64,
    dropout_rate=0.1,
)


def _examples(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def seq(lo, hi):
        return np.append(rng.integers(3, 300, rng.integers(lo, hi)), 1).astype(np.int32)

    for _ in range(n):
        body = seq(3, 14)
        yield [(body, seq(1, 3), 1), (body.copy(), seq(4, 10), 2)]


def test_packed_batches_are_fixed_shape_and_exact():
    batches = list(pack_examples(_examples(40), 3, 32, 24, (0.25, 0.75), window=8))
    assert sum(b["num_examples"] for b in batches) == 40
    for b in batches:
        assert b["encoder_input_tokens"].shape == (3, 32)
        assert b["decoder_target_tokens"].shape == (3, 24)
        tgt, inp = b["decoder_target_tokens"], b["decoder_input_tokens"]
        seg, pos = b["decoder_segment_ids"], b["decoder_positions"]
        # Decoder inputs: targets shifted right within each segment, 0 at each segment start.
        starts = (pos == 0) & (seg > 0)
        assert (inp[starts] == 0).all()
        shifted = np.zeros_like(tgt)
        shifted[:, 1:] = tgt[:, :-1]
        inner = (seg > 0) & ~starts
        assert (inp[inner] == shifted[inner]).all()
        # Every decoder segment has an encoder segment with the same id in its row.
        for r in range(3):
            dec_ids = set(np.unique(seg[r])) - {0}
            assert dec_ids <= set(np.unique(b["encoder_segment_ids"][r]))
        # Weights follow the task; both tasks of each example are in the batch.
        ids = b["decoder_task_ids"]
        assert np.allclose(b["decoder_loss_weights"], np.array([0.0, 0.25, 0.75])[ids])
        assert (ids == 1).any() and (ids == 2).any()
    real = sum(int((b["encoder_input_tokens"] > 0).sum()) for b in batches)
    assert real / (len(batches) * 3 * 32) > 0.6  # the packer fills rows


def test_bench_step_compiles_once_over_packed_batches(compiles):
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    from dsbs_jax import weighting
    from dsbs_jax.model.t5 import Transformer
    from dsbs_jax.train import losses

    model = Transformer(CONFIG)
    one = jnp.ones((1, 4), jnp.int32)
    params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, one, one, one)["params"])
    tx = optax.adamw(1e-3)
    opt = tx.init(params)
    keys = (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions",
    )  # fmt: skip

    def packed_step(params, opt, step, batch):
        def loss_fn(p):
            logits = model.apply(
                {"params": p}, **{k: batch[k] for k in keys},
                rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(1), step)},
            )  # fmt: skip
            tok = losses.token_losses(logits, batch["decoder_target_tokens"])
            return weighting.weighted_loss(
                tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 2
            )[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    step_fn = jax.jit(packed_step, donate_argnums=(0, 1))
    for i, b in enumerate(pack_examples(_examples(30, seed=1), 2, 32, 24, (0.5, 0.5))):
        batch = {k: b[k] for k in b if k != "num_examples"}
        params, opt, loss = step_fn(params, opt, np.int32(i), batch)
    assert i >= 4 and np.isfinite(float(loss))
    assert len([n for n in compiles.names if "packed_step" in n]) == 1, compiles.names
