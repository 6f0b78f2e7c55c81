"""Hand-written gradients and the per-stack dropout draw give the same function as autodiff.

`cpu_kernels.gated_gelu_mlp`, `cpu_kernels.matmul` and `cpu_kernels.token_losses` carry their own
backward (laid out for XLA's CPU dots); each is checked here against autodiff of the plain
expression, and the dropout plan (`model.dropout`) for its rate and shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsbs_jax.model import cpu_kernels, t5
from dsbs_jax.model import dropout as drop
from dsbs_jax.train import losses


def _rand(seed, *shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _plain_mlp(x, w0, w1, wo, keep, rate):
    h = jax.nn.gelu(x @ w0, approximate=True) * (x @ w1)
    if keep is not None:
        h = jnp.where(keep, h / (1.0 - rate), 0.0)
    return h @ wo


@pytest.mark.parametrize("dropout", [False, True])
def test_gated_gelu_mlp_value_and_gradients(dropout):
    x, w0, w1, wo = _rand(0, 2, 5, 8), _rand(1, 8, 16), _rand(2, 8, 16), _rand(3, 16, 8)
    rate = 0.3
    keep = jax.random.bernoulli(jax.random.key(0), 0.7, (2, 1, 16)) if dropout else None
    cot = _rand(4, 2, 5, 8)

    def run(fn):
        out, vjp = jax.vjp(lambda *a: fn(*a, keep, rate), x, w0, w1, wo)
        return out, vjp(cot)

    (ours, g_ours), (ref, g_ref) = run(cpu_kernels.gated_gelu_mlp), run(_plain_mlp)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_gelu_parts_match_jax_gelu_and_its_derivative():
    a = jnp.linspace(-6.0, 6.0, 101)
    value, slope = cpu_kernels.gelu_parts(a)
    np.testing.assert_array_equal(value, jax.nn.gelu(a, approximate=True))
    np.testing.assert_allclose(slope, jax.vmap(jax.grad(jax.nn.gelu))(a), atol=1e-6)


def test_matmul_gradients():
    x, k, cot = _rand(5, 3, 4, 6), _rand(6, 6, 7), _rand(7, 3, 4, 7)
    out, vjp = jax.vjp(cpu_kernels.matmul, x, k)
    ref, vjp_ref = jax.vjp(lambda a, b: jnp.einsum("...i,io->...o", a, b), x, k)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    for a, b in zip(vjp(cot), vjp_ref(cot)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_token_losses_value_and_gradient(z_loss):
    logits, weights = _rand(8, 2, 6, 11, scale=3.0), _rand(9, 2, 6)
    targets = jnp.asarray(np.random.default_rng(10).integers(0, 11, (2, 6)))

    def plain(lg):
        log_z = jax.nn.logsumexp(lg, axis=-1)
        loss = log_z - jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
        return loss + z_loss * log_z**2

    ref = jax.grad(lambda lg: (plain(lg) * weights).sum())(logits)
    for kernel in (False, True):  # the CPU kernel, and the plain default through autodiff

        def ours(lg, kernel=kernel):
            return losses.token_losses(lg, targets, z_loss, plain=not kernel)

        np.testing.assert_allclose(ours(logits), plain(logits), rtol=1e-6, atol=1e-6)
        grad = jax.grad(lambda lg, f=ours: (f(lg) * weights).sum())(logits)
        np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-6)


def test_keep_mask_rate_and_split_shapes():
    bits = drop.draw_bits(jax.random.key(1), (200_000,))
    assert abs(float(drop.keep_mask(bits, 0.1).mean()) - 0.9) < 0.005
    assert bool(drop.keep_mask(bits, 0.0).all())
    shapes = [(2, 5, 3), (2, 1, 4)]
    rows = bits[:1000].reshape(2, 500)
    masks = drop.split_masks(rows[:, : drop.num_words(shapes)], shapes, 0.5)
    assert [m.shape for m in masks] == shapes and all(m.dtype == jnp.bool_ for m in masks)
    # Each example's masks come from its own row of the draw (so the draw shards by batch).
    np.testing.assert_array_equal(masks[1][1, 0], drop.keep_mask(rows[1, 15:19], 0.5))
    with pytest.raises(ValueError, match="dropout bits"):
        drop.split_masks(rows[:, :100], shapes, 0.5)


# ----------------------------------------------------------------------------------------------
# The CPU kernels against the plain network (what TPU and GPU run): the whole model's loss and
# gradients, sharded over a data x model mesh, with dropout on.


def _sharded_value_and_grad(cfg, mesh, rules, params, batch, rng):
    import flax.linen as nn

    from dsbs_jax.train import partitioning

    plain = t5.resolve_kernels(cfg, "cpu").kernels == "plain"
    model = t5.Transformer(cfg)
    with mesh, nn.logical_axis_rules(rules):
        _, shardings, _ = partitioning.param_layout(model, (12, 8), mesh, rules)

        def loss(p):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                logits = model.apply({"params": p}, **batch, rngs={"dropout": rng})
            tok = losses.token_losses(logits, batch["decoder_target_tokens"], 1e-4, plain)
            return (tok * (batch["decoder_target_tokens"] > 0)).sum() / tok.size

        fn = jax.jit(jax.value_and_grad(loss), in_shardings=(shardings,))
        return fn(jax.device_put(params, shardings))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_kernels_equal_the_plain_network_sharded_with_dropout(dtype):
    from jax.sharding import Mesh

    from dsbs_jax.train import partitioning

    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    rules = partitioning.STANDARD_RULES
    cfg = t5.T5Config(
        vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
        head_dim=8, mlp_dim=32, dropout_rate=0.2, dtype=dtype,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tgt = jnp.asarray(rng.integers(1, 64, (4, 8)), jnp.int32).at[:, 6:].set(0)
    batch = {
        "encoder_input_tokens": jnp.asarray(rng.integers(1, 64, (4, 12)), jnp.int32),
        "decoder_input_tokens": jnp.pad(tgt[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": tgt,
    }
    params = t5.Transformer(cfg).init(
        jax.random.key(0), batch["encoder_input_tokens"], batch["decoder_input_tokens"], tgt,
        enable_dropout=False,
    )["params"]  # fmt: skip
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params)
    import dataclasses

    out = {
        k: _sharded_value_and_grad(
            dataclasses.replace(cfg, kernels=k), mesh, rules, params, batch, jax.random.key(3)
        )
        for k in ("cpu", "plain")
    }  # fmt: skip
    (l_cpu, g_cpu), (l_plain, g_plain) = out["cpu"], out["plain"]
    tol = 1e-5 if dtype == "float32" else 2e-2
    # In bfloat16 a gradient element that is the difference of larger terms carries their
    # rounding: up to 2.5% of a tensor's largest element was seen (float32 agrees to 1e-5).
    atol = 1e-5 if dtype == "float32" else 4e-2
    np.testing.assert_allclose(float(l_cpu), float(l_plain), rtol=tol)
    for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_plain)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=tol, atol=atol * float(np.abs(b).max()))


def test_mask_folded_into_bias_gives_the_same_logits():
    cfg = t5.T5Config(
        vocab_size=16, emb_dim=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        head_dim=4, mlp_dim=8,
    )  # fmt: skip
    mask = jax.random.bernoulli(jax.random.key(2), 0.7, (2, 1, 5, 5))
    bias = _rand(11, 2, 2, 5, 5)
    logits = _rand(12, 2, 2, 5, 5, scale=5.0)
    per_layer = (logits + jnp.where(mask, 0.0, t5._NEG_INF)) + bias
    folded = logits + t5._mask_bias(mask, bias, cfg)
    attend = jnp.broadcast_to(mask, folded.shape)
    np.testing.assert_array_equal(folded[attend], per_layer[attend])
    np.testing.assert_array_equal(jax.nn.softmax(folded)[attend], jax.nn.softmax(per_layer)[attend])
