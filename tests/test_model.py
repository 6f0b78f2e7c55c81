"""T5 v1.1 network: T5X parameter names, logical axes, masks, packing, dtypes, sizes.

Compiles are the cost here, so forward tests share one batch shape (2 x 12 -> 9) and the
backward tests share one compiled value-and-grad.
"""

import functools
import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from dsbs_jax.model import counts, t5
from dsbs_jax.model.t5 import T5Config, Transformer

TINY = T5Config(
    vocab_size=64,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    head_dim=16,
    mlp_dim=64,
    dropout_rate=0.0,
)
ENC, DEC = 12, 9  # the shared batch shape: [2, ENC] -> [2, DEC]
# Compiles dominate these tests on CPU; XLA's backend optimisations buy nothing at this size.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
GIN_DIR = pathlib.Path(t5.__file__).resolve().parents[1] / "gin_configs" / "models"


def _replace(cfg: T5Config, **kw) -> T5Config:
    return T5Config(**{**cfg.__dict__, **kw})


def _init_fn(cfg: T5Config):
    tok = jnp.ones((1, 4), jnp.int32)
    return lambda: Transformer(cfg).init(jax.random.key(0), tok, tok, tok, enable_dropout=False)


def _abstract_params(cfg: T5Config):
    """Boxed parameter shapes without computing anything."""
    return jax.eval_shape(_init_fn(cfg))["params"]


@pytest.fixture(scope="module")
def params():
    return nn.unbox(_jit(_init_fn(TINY))()["params"])


@functools.cache
def _forward(cfg: T5Config):
    def run(p, enc, dec_in, tgt, **kw):
        return Transformer(cfg).apply({"params": p}, enc, dec_in, tgt, enable_dropout=False, **kw)

    return _jit(run)


def _loss(cfg: T5Config, p, enc, tgt, seed=None):
    rngs = None if seed is None else {"dropout": jax.random.key(seed)}
    logits = Transformer(cfg).apply(
        {"params": p}, enc, _shift(tgt), tgt, enable_dropout=seed is not None, rngs=rngs
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()


@functools.cache
def _value_and_grad(cfg: T5Config):
    return _jit(jax.value_and_grad(functools.partial(_loss, cfg)))


def _one_layer(params):
    """TINY's parameters cut down to one encoder and one decoder layer (a cheaper compile)."""
    cfg = _replace(TINY, num_encoder_layers=1, num_decoder_layers=1)
    cut = {k: v for k, v in params.items()}
    for stack in ("encoder", "decoder"):
        cut[stack] = {k: v for k, v in params[stack].items() if k != "layers_1"}
    return cfg, cut


def _shift(tgt):
    return jnp.pad(tgt, ((0, 0), (1, 0)))[:, :-1]


def _batch(seed: int, enc_len: int = ENC, dec_len: int = DEC):
    rng = np.random.default_rng(seed)
    return rng.integers(2, TINY.vocab_size, (2, enc_len)), rng.integers(2, 64, (2, dec_len))


# ----------------------------------------------------------------------------------------------
# Parameter tree


def _expected_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    """T5X t5x/examples/t5/network.py names and shapes, written out independently."""
    d, h, k, m, v = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    attn = {"query": (d, h, k), "key": (d, h, k), "value": (d, h, k), "out": (h, k, d)}
    mlp = {"wi_0": (d, m), "wi_1": (d, m), "wo": (m, d)}
    out = {"token_embedder/embedding": (v, d)}
    for stack in ("encoder", "decoder"):
        out[f"{stack}/relpos_bias/rel_embedding"] = (h, cfg.relative_attention_num_buckets)
    out["encoder/encoder_norm/scale"] = (d,)
    out["decoder/decoder_norm/scale"] = (d,)
    out["decoder/logits_dense/kernel"] = (d, v)
    for i in range(cfg.num_encoder_layers):
        p = f"encoder/layers_{i}"
        out[f"{p}/pre_attention_layer_norm/scale"] = (d,)
        out[f"{p}/pre_mlp_layer_norm/scale"] = (d,)
        out.update({f"{p}/attention/{n}/kernel": s for n, s in attn.items()})
        out.update({f"{p}/mlp/{n}/kernel": s for n, s in mlp.items()})
    for i in range(cfg.num_decoder_layers):
        p = f"decoder/layers_{i}"
        for norm in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            out[f"{p}/{norm}_layer_norm/scale"] = (d,)
        for a in ("self_attention", "encoder_decoder_attention"):
            out.update({f"{p}/{a}/{n}/kernel": s for n, s in attn.items()})
        out.update({f"{p}/mlp/{n}/kernel": s for n, s in mlp.items()})
    return out


def _flat_shapes(boxed) -> dict[str, tuple[int, ...]]:
    flat = traverse_util.flatten_dict(nn.unbox(boxed), sep="/")
    return {k: tuple(x.shape) for k, x in flat.items()}


def test_param_tree_matches_t5x_names_and_shapes(params):
    assert _flat_shapes(params) == _expected_shapes(TINY)
    assert sum(x.size for x in jax.tree.leaves(params)) == counts.num_params(TINY)
    odd = _replace(TINY, num_encoder_layers=3, num_decoder_layers=1, num_heads=3, head_dim=8)
    assert _flat_shapes(_abstract_params(odd)) == _expected_shapes(odd)


def test_tied_embedding_has_no_logits_dense():
    cfg = _replace(TINY, logits_via_embedding=True)
    shapes = _flat_shapes(_abstract_params(cfg))
    assert "decoder/logits_dense/kernel" not in shapes
    assert sum(int(np.prod(s)) for s in shapes.values()) == counts.num_params(cfg)


def test_every_param_has_logical_axes():
    boxed = _abstract_params(TINY)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    allowed = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets"}
    assert len(leaves) == len(_expected_shapes(TINY))
    for x in leaves:
        assert isinstance(x, nn.LogicallyPartitioned)
        assert len(x.names) == x.value.ndim and set(x.names) <= allowed, x.names
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    assert tuple(specs["token_embedder/embedding"]) == ("vocab", "embed")
    assert tuple(specs["encoder/layers_0/attention/query/kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["encoder/layers_0/attention/out/kernel"]) == ("heads", "kv", "embed")
    assert tuple(specs["decoder/layers_1/mlp/wo/kernel"]) == ("mlp", "embed")
    assert tuple(specs["decoder/logits_dense/kernel"]) == ("embed", "vocab")
    assert tuple(specs["decoder/relpos_bias/rel_embedding"]) == ("heads", "relpos_buckets")
    assert tuple(specs["decoder/decoder_norm/scale"]) == ("embed",)


def test_param_dtype_bfloat16():
    cfg = _replace(TINY, param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(_abstract_params(cfg)))} == {
        jnp.dtype(jnp.bfloat16)
    }


# ----------------------------------------------------------------------------------------------
# Forward pass


def test_init_loss_is_near_log_vocab(params):
    enc, tgt = _batch(0)
    logits = _forward(TINY)(params, enc, _shift(tgt), tgt)
    assert logits.shape == (2, DEC, TINY.vocab_size) and logits.dtype == jnp.float32
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
    assert abs(float(loss) - np.log(TINY.vocab_size)) < 1.5


@pytest.mark.parametrize("with_positions", [True, False])
def test_packed_equals_unpacked(params, with_positions):
    rng = np.random.default_rng(1)
    ea, eb = rng.integers(2, 64, 5), rng.integers(2, 64, 4)
    ta, tb = rng.integers(2, 64, 3), rng.integers(2, 64, 4)

    def row(*parts, length):
        return np.concatenate([*parts, np.zeros(length - sum(map(len, parts)), int)])

    # Each example alone (padded), and both packed into one row (row 2 is a spare copy).
    enc = np.stack([row(ea, length=ENC), row(eb, length=ENC)])
    tgt = np.stack([row(ta, length=DEC), row(tb, length=DEC)])
    alone = np.asarray(_forward(TINY)(params, enc, _shift(tgt), tgt))

    packed_enc = np.stack([row(ea, eb, length=ENC)] * 2)
    packed_tgt = np.stack([row(ta, tb, length=DEC)] * 2)
    packed_in = np.stack([row(_shift(ta[None])[0], _shift(tb[None])[0], length=DEC)] * 2)
    kw = dict(
        encoder_segment_ids=np.stack([row([1] * 5, [2] * 4, length=ENC)] * 2),
        decoder_segment_ids=np.stack([row([1] * 3, [2] * 4, length=DEC)] * 2),
    )
    if with_positions:
        kw["encoder_positions"] = np.stack([row(range(5), range(4), length=ENC)] * 2)
        kw["decoder_positions"] = np.stack([row(range(3), range(4), length=DEC)] * 2)
    packed = np.asarray(_forward(TINY)(params, packed_enc, packed_in, packed_tgt, **kw))[0]
    np.testing.assert_allclose(packed[:3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[3:7], alone[1, :4], atol=1e-5)


def test_decoder_is_causal(params):
    enc, tgt = _batch(2)
    base = np.asarray(_forward(TINY)(params, enc, _shift(tgt), tgt))
    tgt2 = tgt.copy()
    tgt2[:, 3:] = np.random.default_rng(0).integers(2, 64, (2, DEC - 3))
    changed = np.asarray(_forward(TINY)(params, enc, _shift(tgt2), tgt2))
    np.testing.assert_allclose(changed[:, :4], base[:, :4], atol=1e-6)  # inputs differ from 4 on
    assert np.abs(changed[:, 4:] - base[:, 4:]).max() > 1e-3


def test_padding_does_not_affect_other_tokens(params):
    enc, tgt = _batch(3)
    enc[:, 7:] = 0
    tgt[:, 5:] = 0
    base = np.asarray(_forward(TINY)(params, enc, _shift(tgt), tgt))
    # Whatever sits in padded slots (encoder tokens aside) stays invisible to real positions.
    junk_in = np.asarray(_shift(tgt)).copy()
    junk_in[:, 6:] = 7
    junk = np.asarray(_forward(TINY)(params, enc, junk_in, tgt))
    np.testing.assert_allclose(junk[:, :5], base[:, :5], atol=1e-6)
    # Cutting the padding off changes nothing either.
    cut = np.asarray(
        _jit(
            lambda p, e, t: Transformer(TINY).apply(
                {"params": p}, e, _shift(t), t, enable_dropout=False
            )
        )(params, enc[:, :7], tgt[:, :5])
    )
    np.testing.assert_allclose(cut, base[:, :5], atol=1e-5)


def test_relative_position_buckets_match_t5():
    # Hand-checked values of T5's bucket rule (32 buckets, max distance 128); rel = key - query.
    bi = t5._bucket_table(True, 32, 128)
    causal = t5._bucket_table(False, 32, 128)

    def b(table, rel):
        return int(table[np.clip(rel, -128, 128) + 128])

    assert [b(bi, r) for r in (0, 1, -1, 7, -7, 8, 16, 500, -500)] == [
        0, 17, 1, 23, 7, 24, 26, 31, 15,
    ]  # fmt: skip
    assert [b(causal, r) for r in (0, 1, 5, -1, -15, -16, -32, -127, -1000)] == [
        0, 0, 0, 1, 15, 16, 21, 31, 31,
    ]  # fmt: skip


def test_bfloat16_activations_track_float32(params):
    enc, tgt = _batch(4)
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    cfg = _replace(TINY, dtype="bfloat16", param_dtype="bfloat16")
    logits = _forward(cfg)(p16, enc, _shift(tgt), tgt)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    ref = _forward(TINY)(jax.tree.map(lambda x: x.astype(jnp.float32), p16), enc, _shift(tgt), tgt)
    corr = np.corrcoef(np.asarray(logits).ravel(), np.asarray(ref).ravel())[0, 1]
    assert corr > 0.99


def test_dropout_is_active_only_when_enabled(params):
    enc, tgt = _batch(5)
    cfg, params = _one_layer(params)
    cfg = _replace(cfg, dropout_rate=0.3)
    loss = _jit(functools.partial(_loss, cfg))
    assert float(loss(params, enc, tgt, 0)) != float(loss(params, enc, tgt, 1))
    assert float(loss(params, enc, tgt, 0)) == float(loss(params, enc, tgt, 0))
    off = _forward(cfg)(params, enc, _shift(tgt), tgt)
    no_dropout = _forward(_replace(cfg, dropout_rate=0.0))(params, enc, _shift(tgt), tgt)
    np.testing.assert_array_equal(off, no_dropout)


# ----------------------------------------------------------------------------------------------
# Backward pass


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_gives_the_same_gradients(params, policy):
    enc, tgt = _batch(6)
    cfg, params = _one_layer(params)
    l1, g1 = _value_and_grad(cfg)(params, enc, tgt)
    l2, g2 = _value_and_grad(_replace(cfg, remat_policy=policy))(params, enc, tgt)
    assert float(l1) == pytest.approx(float(l2), abs=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_tiny_model_overfits_one_batch(params):
    enc, tgt = _batch(7)
    opt = optax.adam(1e-2)
    update = _jit(opt.update)
    state = opt.init(params)
    losses = []
    for _ in range(50):
        loss, grads = _value_and_grad(TINY)(params, enc, tgt)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_flops_match_xla_count(params):
    enc, tgt = _batch(8)
    cost = _value_and_grad(TINY).lower(params, enc, tgt).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = counts.flops_per_example(TINY, ENC, DEC) * 2  # batch of 2
    # XLA also counts elementwise work, a large share at this width; ours is matmuls only.
    assert 0.5 < ours / cost["flops"] < 1.5, (ours, cost["flops"])
    assert counts.flops_per_token(TINY, ENC, DEC) == pytest.approx(ours / 2 / (ENC + DEC))


# ----------------------------------------------------------------------------------------------
# gin and sizes


def test_gin_model_configs_and_public_sizes():
    expected = {"small": 76_961_152, "base": 247_577_856, "large": 783_150_080}
    sizes = {}
    for path in sorted(GIN_DIR.glob("t5_1_1_*.gin")):
        assert path.read_text().startswith("# ")
        gin.clear_config()
        try:
            gin.parse_config_file(str(path))
            cfg = t5.T5Config()
        finally:
            gin.clear_config()
        # tiny and mini take the size from the task's vocabulary (0); the public sizes are T5's.
        want_vocab = 0 if path.stem in ("t5_1_1_tiny", "t5_1_1_mini") else 32128
        assert cfg.vocab_size == want_vocab and cfg.mlp_activations == ("gelu", "linear")
        sizes[path.stem.removeprefix("t5_1_1_")] = counts.num_params(cfg)
    assert set(sizes) == {"tiny", "mini", "small", "base", "large", "xl", "xxl"}
    assert {k: sizes[k] for k in expected} == expected
    # VOCAB_SIZE is a macro the trainer overrides.
    try:
        gin.parse_config_file(str(GIN_DIR / "t5_1_1_small.gin"))
        gin.parse_config("VOCAB_SIZE = 1000")
        small = t5.T5Config()
    finally:
        gin.clear_config()
    assert small.vocab_size == 1000 and small.kernels == "auto"  # the model gins leave it open
    small = t5.resolve_kernels(small, "cpu")  # as an entry point does
    n = sum(int(np.prod(s)) for s in _flat_shapes(_abstract_params(small)).values())
    assert n == counts.num_params(small)


def test_every_model_gin_leaves_kernels_to_the_entry_point():
    """The library's default is 'plain'; every model gin binds KERNELS ('auto' unless the user
    says otherwise), so a run on CPU keeps the CPU kernels whatever gin names its model."""
    gins = sorted(GIN_DIR.glob("*.gin"))
    assert len(gins) >= 10
    for path in gins:
        gin.clear_config()
        try:
            gin.parse_config_file(str(path))
            assert t5.T5Config().kernels == "auto", path.name
            gin.parse_config("KERNELS = 'plain'")
            assert t5.T5Config().kernels == "plain", path.name
        finally:
            gin.clear_config()


def test_kernels_plain_by_default_and_auto_settled_before_the_network():
    """The library's default is T5X's shape of computation; 'auto' (the model gins') is settled by
    the entry point that knows the devices, and the network refuses it unsettled."""
    assert TINY.kernels == "plain"
    auto = _replace(TINY, kernels="auto")
    with pytest.raises(ValueError, match="kernels is 'auto'"):
        _init_fn(auto)()
    assert t5.resolve_kernels(auto, "cpu").kernels == "cpu"
    assert t5.resolve_kernels(auto, "tpu").kernels == "plain"
    assert t5.resolve_kernels(auto, "gpu").kernels == "plain"
