"""T5 v1.1 encoder-decoder in flax linen, with T5X's parameter names and logical axes.

The parameter tree has the names and logical axes of T5X's `t5x/examples/t5/network.py`, so T5X
checkpoints map one to one, name for name. One shape differs: attention kernels are 3-D here
(query/key/value [embed, heads, head_dim], out [heads, head_dim, embed]) where T5X stores them 2-D
([embed, heads * head_dim] and [heads * head_dim, embed]); `dsbs_jax.interop.t5x` reshapes them on
read and write. Other differences from T5X, none of which change the function computed:
the relative position bias is computed once per stack (T5X recomputes it in every layer from the
same parameters) with the attention mask folded into it, the bias follows the `*_positions` arrays
when they are given, and the key/value cache is laid out [batch, length, heads, head_dim].

Dropout is T5X's (its masks, shapes and rate), drawn as `dsbs_jax.model.dropout` plans: one
random draw per stack, attention's mask over [batch, heads, keys] applied to the values instead of
the [batch, heads, q, k] weights (the same product). With `kernels='cpu'` the gated MLP, the
logits layer and the loss run the hand-written backward passes of `dsbs_jax.model.cpu_kernels`
(the same function; faster on CPU, docs/performance.md); the default, 'plain', is this module
under JAX's autodiff. Sizes and FLOPs: `dsbs_jax.model.counts`.

On positions: within a contiguous packed segment, key minus query position is the same whether
taken from `*_positions` or from the row index, so both give identical logits (tested). Passing
positions costs a [batch, heads, q, k] bias per stack instead of [1, heads, q, k]; omit them to
save that memory when segments are contiguous (seqio packing is).

`T5Config` is gin-configurable (classic gin, no dynamic registration) as `t5.T5Config`
(full name `dsbs_jax.model.t5.T5Config`); see `dsbs_jax/gin_configs/models/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax.model import cpu_kernels
from dsbs_jax.model import dropout as drop

Array = jax.Array

_NEG_INF = -1e10
_NORM_EPS = 1e-6


@gin.configurable(module="dsbs_jax.model.t5")
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5 v1.1 network (names as in T5X's `T5Config`)."""

    vocab_size: int
    emb_dim: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    head_dim: int
    mlp_dim: int
    mlp_activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    dtype: str = "float32"  # activations: 'float32' | 'bfloat16'
    param_dtype: str = "float32"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    float32_attention_logits: bool = True
    remat_policy: str = "none"  # a name in REMAT_POLICIES
    kernels: str = "plain"  # a name in KERNELS; 'auto' is settled by the entry point

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16"):
                raise ValueError(f"T5Config.{field} must be 'float32' or 'bfloat16'")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"T5Config.remat_policy must be one of {sorted(REMAT_POLICIES)}")
        if self.kernels not in KERNELS:
            raise ValueError(f"T5Config.kernels must be one of {KERNELS}")


# What each layer keeps for the backward pass (`jax.checkpoint` policies; T5X and MaxText name
# the same choices). 'none': everything (no recomputation); 'full': only the layer's inputs;
# 'dots': the results of matrix products, recomputing the elementwise work between them;
# 'dots_no_batch': only products without batch dimensions (the projections, not attention's
# [batch, heads, q, k] scores), so attention is recomputed.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# 'plain' (the library's default): this network under JAX's autodiff, T5X's shape of computation,
# which shards cleanly over a ('data', 'model') mesh. 'cpu': the same function with the
# hand-written backward passes of `cpu_kernels` (faster on CPU, docs/performance.md). 'auto' (the
# model gins' KERNELS): 'cpu' on CPU, 'plain' on TPU and GPU, settled once where the devices are
# known (`resolve_kernels`): by `step.build_programs` for the step train runs and compile
# lowers, by `inference.load_model` for eval and predict. The network refuses 'auto'.
KERNELS = ("auto", "cpu", "plain")


def resolve_kernels(config: T5Config, platform: str | None = None) -> T5Config:
    """The config with `kernels` 'auto' replaced by the choice for `platform` (default: JAX's
    default backend)."""
    if config.kernels != "auto":
        return config
    platform = platform or jax.default_backend()
    return dataclasses.replace(config, kernels="cpu" if platform == "cpu" else "plain")


def _cpu_kernels(config: T5Config) -> bool:
    if config.kernels == "auto":
        raise ValueError(
            "T5Config.kernels is 'auto': settle it where the devices are known "
            "(t5.resolve_kernels(config, platform)) before building the network"
        )
    return config.kernels == "cpu"


def _dt(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _param(
    module: nn.Module, name: str, init: Any, shape: tuple[int, ...], axes: tuple[str, ...], dtype
) -> Array:
    """A parameter carrying its logical axis names (`nn.LogicallyPartitioned` when boxed)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dt(dtype))


def _dense_init(in_axis, out_axis, distribution: str = "truncated_normal"):
    return nn.initializers.variance_scaling(
        1.0, "fan_in", distribution, in_axis=in_axis, out_axis=out_axis
    )


# ----------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no mean subtraction, no bias; computed in float32."""

    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(
            self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + _NORM_EPS)
        return y.astype(_dt(self.dtype)) * scale.astype(_dt(self.dtype))


class Embed(nn.Module):
    """Token embedding [vocab, embed]; `attend` gives tied logits in float32."""

    num_embeddings: int
    features: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        self.embedding = _param(
            self,
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_embeddings, self.features),
            ("vocab", "embed"),
            self.param_dtype,
        )

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding, tokens.astype(jnp.int32), axis=0).astype(_dt(self.dtype))

    def attend(self, x: Array) -> Array:
        emb = self.embedding.astype(jnp.float32)
        return jnp.einsum("...e,ve->...v", x.astype(jnp.float32), emb)


def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of every relative position in [-max_distance, max_distance] (T5's rule, numpy f32).

    Beyond max_distance the bucket saturates, so clipping a relative position into this range and
    looking it up here is exact.
    """
    rel = np.arange(-max_distance, max_distance + 1)  # memory_position - query_position
    n = -rel
    ret = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int64) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (ret + np.where(is_small, n, large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
    """T5 relative position bias: rel_embedding [heads, buckets] -> bias [b|1, heads, q, k]."""

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array, bidirectional: bool) -> Array:
        """q_pos [b, q] and k_pos [b, k] (b may be 1) are positions within each segment."""
        rel_embedding = _param(
            self,
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets),
            ("heads", "relpos_buckets"),
            self.param_dtype,
        )
        table = jnp.asarray(_bucket_table(bidirectional, self.num_buckets, self.max_distance))
        rel = k_pos[:, None, :] - q_pos[:, :, None]  # [b, q, k]
        rel = jnp.clip(rel, -self.max_distance, self.max_distance) + self.max_distance
        # The bias of every clipped relative position, [heads, 2 * max_distance + 1], then one
        # gather straight into [heads, b, q, k] (indices are in range: mode "clip" adds no select).
        by_rel = jnp.take(rel_embedding, table, axis=1, mode="clip")
        bias = jnp.take(by_rel, rel, axis=1, mode="clip")  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3)).astype(_dt(self.dtype))


class MultiHeadAttention(nn.Module):
    """T5 attention: no biases, no 1/sqrt(d) at logit time (folded into the query init).

    With decode=True and an initialised 'cache' collection it takes one query position per call
    and keeps `cached_key`, `cached_value` [batch, max_len, heads, head_dim] and `cache_index`.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    float32_logits: bool = True

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | None,
        bias: Array | None,
        deterministic: bool,
        decode: bool = False,
        dropout_keep: Array | None = None,
    ) -> Array:
        """`mask` [b|1, 1, q, k] (True = attend) and `bias` [b|1, heads, q, k] are both optional;
        the stacks pass the mask already folded into the bias (see `_mask_bias`).
        `dropout_keep` [b, k, heads] is the dropout keep mask (drawn here when None)."""
        dtype = _dt(self.dtype)
        emb = inputs_q.shape[-1]
        qkv_shape = (emb, self.num_heads, self.head_dim)
        qkv_axes = ("embed", "heads", "kv")
        depth_scale = self.head_dim**-0.5
        base = _dense_init(0, (1, 2), "normal")  # T5X attention: fan_in normal

        def q_init(key, shape, dt=jnp.float32):
            return base(key, shape, dt) * jnp.asarray(depth_scale, dt)

        q = _Proj(qkv_shape, qkv_axes, q_init, self.dtype, self.param_dtype, name="query")(inputs_q)
        k = _Proj(qkv_shape, qkv_axes, base, self.dtype, self.param_dtype, name="key")(inputs_kv)
        v = _Proj(qkv_shape, qkv_axes, base, self.dtype, self.param_dtype, name="value")(inputs_kv)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))

        if decode:
            initialised = self.has_variable("cache", "cached_key")
            ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialised:
                batch, max_len, _, _ = ck.value.shape
                if q.shape[1] != 1:
                    raise ValueError(f"decode step takes one position, got {q.shape[1]}")
                cur = ci.value
                ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, cur, 0, 0))
                cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, cur, 0, 0))
                ci.value = cur + 1
                k, v = ck.value, cv.value
                step_mask = (jnp.arange(max_len) <= cur)[None, None, None, :]
                step_mask = jnp.broadcast_to(step_mask, (batch, 1, 1, max_len))
                mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)

        if self.float32_logits:
            q, k = q.astype(jnp.float32), k.astype(jnp.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if mask is not None:
            logits = logits + jnp.where(mask, 0.0, _NEG_INF).astype(logits.dtype)
        if bias is not None:
            logits = logits + bias.astype(logits.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
        v = v.astype(dtype)
        if not deterministic and self.dropout_rate > 0.0:
            # T5X drops attention weights with a mask broadcast over queries: weights[b, h, q, k]
            # * m[b, h, k]. The same product is taken here as weights[b, h, q, k] * (m[b, h, k]
            # * v[b, k, h, :]), which touches [b, k, h, head_dim] values instead of [b, h, q, k].
            if dropout_keep is None:
                dropout_keep = drop.keep_mask(
                    drop.draw_bits(self.make_rng("dropout"), v.shape[:3]), self.dropout_rate
                )
            keep = nn.with_logical_constraint(dropout_keep, ("batch", "length", "heads"))
            v = drop.apply_keep(v, keep[..., None], self.dropout_rate)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return _Out(emb, self.dtype, self.param_dtype, name="out")(out)


class _Proj(nn.Module):
    """[b, l, embed] -> [b, l, heads, kv] with kernel [embed, heads, kv]."""

    shape: tuple[int, int, int]
    axes: tuple[str, str, str]
    kernel_init: Any
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(self, "kernel", self.kernel_init, self.shape, self.axes, self.param_dtype)
        dtype = _dt(self.dtype)
        return jnp.einsum("ble,ehd->blhd", x.astype(dtype), kernel.astype(dtype))


class _Out(nn.Module):
    """[b, l, heads, kv] -> [b, l, embed] with kernel [heads, kv, embed]."""

    features: int
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (x.shape[-2], x.shape[-1], self.features)
        kernel = _param(
            self,
            "kernel",
            _dense_init((0, 1), 2, "normal"),
            shape,
            ("heads", "kv", "embed"),
            self.param_dtype,
        )
        dtype = _dt(self.dtype)
        return jnp.einsum("blhd,hde->ble", x.astype(dtype), kernel.astype(dtype))


class _Dense(nn.Module):
    """Matmul, kernel [in, out] with the given logical axes; no bias. With `plain` False its
    backward is `cpu_kernels.matmul`'s."""

    features: int
    axes: tuple[str, str]
    dtype: str
    param_dtype: str
    plain: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(
            self, "kernel", _dense_init(0, 1), (x.shape[-1], self.features), self.axes,
            self.param_dtype,
        )  # fmt: skip
        dtype = _dt(self.dtype)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        return (
            jnp.einsum("...i,io->...o", x, kernel) if self.plain else cpu_kernels.matmul(x, kernel)
        )


def _activation(name: str):
    if name == "linear":
        return lambda x: x
    if name == "gelu":
        return nn.gelu  # tanh approximation, as T5X (flax's default)
    return getattr(nn, name)


class _Kernel(nn.Module):
    """The `kernel` parameter of a dense layer, cast to dtype (for code that does its own product)."""

    shape: tuple[int, int]
    axes: tuple[str, str]
    dtype: str
    param_dtype: str

    @nn.compact
    def __call__(self) -> Array:
        kernel = _param(self, "kernel", _dense_init(0, 1), self.shape, self.axes, self.param_dtype)
        return kernel.astype(_dt(self.dtype))


class MlpBlock(nn.Module):
    """Gated feed-forward: prod_i act_i(x @ wi_i), dropout, then @ wo."""

    mlp_dim: int
    activations: tuple[str, ...]
    dropout_rate: float
    dtype: str
    param_dtype: str
    plain: bool = True  # False: the gated-GELU MLP runs `cpu_kernels.gated_gelu_mlp`

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, dropout_keep: Array | None = None) -> Array:
        """`dropout_keep` [b, 1, mlp] is the dropout keep mask (drawn here when None)."""
        if deterministic or self.dropout_rate == 0.0:
            dropout_keep = None
        elif dropout_keep is None:
            bits = drop.draw_rows(self.make_rng("dropout"), x.shape[0], self.mlp_dim)
            dropout_keep = drop.keep_mask(bits[:, None, :], self.dropout_rate)
        if not self.plain and tuple(self.activations) == ("gelu", "linear"):
            d, m = x.shape[-1], self.mlp_dim
            w0, w1, wo = (
                _Kernel(shape, axes, self.dtype, self.param_dtype, name=name)()
                for name, shape, axes in (
                    ("wi_0", (d, m), ("embed", "mlp")),
                    ("wi_1", (d, m), ("embed", "mlp")),
                    ("wo", (m, d), ("mlp", "embed")),
                )
            )
            x = x.astype(_dt(self.dtype))
            return cpu_kernels.gated_gelu_mlp(x, w0, w1, wo, dropout_keep, self.dropout_rate)
        h = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            y = _Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, self.param_dtype, self.plain,
                       name=name)(x)  # fmt: skip
            y = _activation(act)(nn.with_logical_constraint(y, ("batch", "length", "mlp")))
            h = y if h is None else h * y
        if dropout_keep is not None:
            dropout_keep = nn.with_logical_constraint(dropout_keep, ("batch", None, "mlp"))
        h = drop.apply(h, dropout_keep, self.dropout_rate)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return _Dense(x.shape[-1], ("mlp", "embed"), self.dtype, self.param_dtype, self.plain,
                      name="wo")(h)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Layers and stacks


def _attention(cfg: T5Config, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dropout_rate=cfg.dropout_rate,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        float32_logits=cfg.float32_attention_logits,
        name=name,
    )


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    return RMSNorm(dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _mlp(cfg: T5Config) -> MlpBlock:
    return MlpBlock(
        cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype, cfg.param_dtype,
        plain=not _cpu_kernels(cfg), name="mlp",
    )  # fmt: skip


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and MLP blocks with residuals."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        mask: Array | None,
        bias: Array,
        deterministic: bool,
        dropout_bits: Array | None = None,
    ):
        """`dropout_bits`: uint32 words for this layer's masks (`dropout.encoder_layer_shapes`)."""
        cfg = self.config
        shapes = drop.encoder_layer_shapes(cfg, inputs.shape[0], inputs.shape[1])
        attn_keep, keep1, mlp_keep, keep2 = drop.layer_masks(
            self, dropout_bits, shapes, deterministic
        )
        rate = cfg.dropout_rate
        x = _norm(cfg, "pre_attention_layer_norm")(inputs)
        x = _attention(cfg, "attention")(x, x, mask, bias, deterministic, dropout_keep=attn_keep)
        x = _constrain(drop.apply(x, keep1, rate) + inputs)
        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic, mlp_keep)
        return _constrain(drop.apply(y, keep2, rate) + x)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and MLP blocks with residuals."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        encoded: Array,
        self_mask: Array | None,
        cross_mask: Array | None,
        bias: Array,
        deterministic: bool,
        decode: bool,
        dropout_bits: Array | None = None,
        cross_bias: Array | None = None,
    ):
        """`dropout_bits`: uint32 words for this layer's masks (`dropout.decoder_layer_shapes`)."""
        cfg = self.config
        shapes = drop.decoder_layer_shapes(cfg, inputs.shape[0], inputs.shape[1], encoded.shape[1])
        masks = drop.layer_masks(self, dropout_bits, shapes, deterministic)
        self_keep, keep1, cross_keep, keep2, mlp_keep, keep3 = masks
        if decode:
            self_keep = None  # keys are the cache's; the attention draws its own mask
        rate = cfg.dropout_rate
        x = _norm(cfg, "pre_self_attention_layer_norm")(inputs)
        x = _attention(cfg, "self_attention")(
            x, x, self_mask, bias, deterministic, decode, dropout_keep=self_keep
        )
        x = _constrain(drop.apply(x, keep1, rate) + inputs)
        y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(
            y, encoded, cross_mask, cross_bias, deterministic, dropout_keep=cross_keep
        )
        y = _constrain(drop.apply(y, keep2, rate) + x)
        z = _norm(cfg, "pre_mlp_layer_norm")(y)
        z = _mlp(cfg)(z, deterministic, mlp_keep)
        return _constrain(drop.apply(z, keep3, rate) + y)


def _remat(layer: type[nn.Module], cfg: T5Config, static_argnums: tuple[int, ...]):
    """The layer class, rematerialised under `cfg.remat_policy` (unchanged for 'none')."""
    if cfg.remat_policy == "none":
        return layer
    return nn.remat(layer, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=static_argnums)


def _mask_bias(mask: Array | None, bias: Array | None, cfg: T5Config) -> Array | None:
    """The attention mask folded into an additive bias, once per stack: bias + (0 | -1e10).

    Where the mask attends the sum is the bias itself (x + 0 = x), so each layer's logits +
    this sum equal (logits + mask term) + bias as computed per layer before."""
    if mask is None:
        return bias
    dtype = jnp.float32 if cfg.float32_attention_logits else _dt(cfg.dtype)
    out = jnp.where(mask, 0.0, _NEG_INF).astype(dtype)
    return out if bias is None else out + bias.astype(dtype)


def _relpos(cfg: T5Config) -> RelativePositionBiases:
    return RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
        num_heads=cfg.num_heads,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name="relpos_bias",
    )


def _positions(tokens: Array, positions: Array | None) -> Array:
    if positions is not None:
        return positions.astype(jnp.int32)
    return jnp.arange(tokens.shape[-1], dtype=jnp.int32)[None, :]


class Encoder(nn.Module):
    """Embedding, encoder layers sharing one relative position bias, final norm."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, mask: Array, positions: Array | None, deterministic: bool):
        cfg = self.config
        pos = _positions(tokens, positions)
        bias = _relpos(cfg)(pos, pos, True)
        bias, mask = _mask_bias(mask, bias, cfg), None  # one [b, heads, q, k] for all layers
        b, length = tokens.shape
        layer_words = drop.num_words(drop.encoder_layer_shapes(cfg, b, length))
        n = cfg.num_encoder_layers
        emb_bits, *layer_bits = drop.stack_bits(
            self, b, [cfg.emb_dim, *[layer_words] * n], deterministic
        )
        emb_keep = drop.layer_masks(self, emb_bits, [(b, 1, cfg.emb_dim)], deterministic)[0]
        final_keep = drop.whole_mask(self, (b, length, cfg.emb_dim), deterministic)
        x = drop.apply(self.shared_embedding(tokens), emb_keep, cfg.dropout_rate)
        x = _constrain(x.astype(_dt(cfg.dtype)))
        layer = _remat(EncoderLayer, cfg, static_argnums=(4,))
        for i in range(n):
            x = layer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic, layer_bits[i])
        x = _norm(cfg, "encoder_norm")(x)
        return drop.apply(x, final_keep, cfg.dropout_rate)  # T5X: not broadcast over length


class Decoder(nn.Module):
    """Embedding, decoder layers sharing one causal relative position bias, norm, logits."""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        tokens: Array,
        positions: Array | None,
        self_mask: Array | None,
        cross_mask: Array | None,
        deterministic: bool,
        decode: bool,
        max_decode_length: int | None,
    ) -> Array:
        cfg = self.config
        q_pos = k_pos = _positions(tokens, positions)
        if decode:
            # One position per call once the cache exists: the bias row of the current step.
            initialised = self.has_variable("cache", "position_index")
            index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
            if initialised:
                if max_decode_length is None:
                    raise ValueError("decode=True needs max_decode_length")
                q_pos = jnp.reshape(index.value, (1, 1))
                k_pos = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]
                index.value = index.value + 1
        bias = _relpos(cfg)(q_pos, k_pos, False)
        # Masks folded into additive biases once for all layers.
        bias, self_mask = _mask_bias(self_mask, bias, cfg), None
        cross_bias, cross_mask = _mask_bias(cross_mask, None, cfg), None
        b, length = tokens.shape
        layer_words = drop.num_words(drop.decoder_layer_shapes(cfg, b, length, encoded.shape[1]))
        n = cfg.num_decoder_layers
        emb_bits, *layer_bits, final_bits = drop.stack_bits(
            self, b, [cfg.emb_dim, *[layer_words] * n, cfg.emb_dim], deterministic
        )
        emb_keep, final_keep = (
            drop.layer_masks(self, bits, [(b, 1, cfg.emb_dim)], deterministic)[0]
            for bits in (emb_bits, final_bits)
        )
        y = drop.apply(self.shared_embedding(tokens), emb_keep, cfg.dropout_rate)
        y = _constrain(y.astype(_dt(cfg.dtype)))
        layer = _remat(DecoderLayer, cfg, static_argnums=(6, 7))
        for i in range(n):
            y = layer(cfg, name=f"layers_{i}")(
                y, encoded, self_mask, cross_mask, bias, deterministic, decode, layer_bits[i],
                cross_bias,
            )  # fmt: skip
        y = _norm(cfg, "decoder_norm")(y)
        y = drop.apply(y, final_keep, cfg.dropout_rate)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) / np.sqrt(y.shape[-1])
        else:
            logits = _Dense(
                cfg.vocab_size, ("embed", "vocab"), "float32", cfg.param_dtype,
                plain=not _cpu_kernels(cfg), name="logits_dense",
            )(y)  # fmt: skip
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


# ----------------------------------------------------------------------------------------------
# Masks


def _pair_mask(q: Array, k: Array, fn=jnp.logical_and) -> Array:
    """[b, q] x [b, k] -> [b, 1, q, k] boolean."""
    return fn(q[:, None, :, None], k[:, None, None, :])


def _and(*masks: Array | None) -> Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


# ----------------------------------------------------------------------------------------------
# The model


class Transformer(nn.Module):
    """T5 v1.1 encoder-decoder. Parameter tree as T5X's `network.Transformer`."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.shared_embedding = Embed(
            cfg.vocab_size, cfg.emb_dim, cfg.dtype, cfg.param_dtype, name="token_embedder"
        )
        self.encoder = Encoder(cfg, self.shared_embedding)
        self.decoder = Decoder(cfg, self.shared_embedding)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        enable_dropout: bool = True,
        encoder_positions: Array | None = None,
    ) -> Array:
        """Encodes [batch, enc_len] tokens (0 = padding) to [batch, enc_len, emb_dim].

        Arguments in T5X's order; `encoder_positions` (ours) is last.
        """
        valid = encoder_input_tokens > 0
        mask = _pair_mask(valid, valid)
        if encoder_segment_ids is not None:
            seg = encoder_segment_ids
            mask = _and(mask, _pair_mask(seg, seg, jnp.equal))
        return self.encoder(
            encoder_input_tokens, mask, encoder_positions, deterministic=not enable_dropout
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Decoder logits [batch, dec_len, vocab] (float32) given the encoder output.

        With decode=True the 'cache' collection must be mutable; once it is initialised each call
        takes one position ([batch, 1] tokens) and no target padding mask is applied.
        """
        enc_valid = encoder_input_tokens > 0
        if decode:
            if encoder_segment_ids is not None:
                raise ValueError("packing (segment ids) cannot be used with decode=True")
            self_mask = None
            cross_mask = _pair_mask(jnp.ones_like(decoder_input_tokens, bool), enc_valid)
        else:
            tgt_valid = decoder_target_tokens > 0
            length = decoder_target_tokens.shape[-1]
            causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
            self_mask = _and(_pair_mask(tgt_valid, tgt_valid), causal)
            cross_mask = _pair_mask(tgt_valid, enc_valid)
            if decoder_segment_ids is not None:
                self_mask = _and(
                    self_mask, _pair_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal)
                )
            if encoder_segment_ids is not None:
                cross_mask = _and(
                    cross_mask, _pair_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal)
                )
        return self.decoder(
            encoded,
            decoder_input_tokens,
            decoder_positions,
            self_mask,
            cross_mask,
            deterministic=not enable_dropout,
            decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        enable_dropout: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> Array:
        """Logits [batch, dec_len, vocab] (float32) for teacher-forced decoder inputs.

        `decoder_input_tokens` are the targets shifted right with 0 as the start token (per
        segment when packed). Padding is token 0; packed rows carry segment ids (1, 2, ...;
        0 = padding) and positions that restart at 0 in each segment.
        """
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            enable_dropout=enable_dropout,
            encoder_positions=encoder_positions,
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout,
            decode,
            max_decode_length,
        )
