"""Sizes of a T5 v1.1 network from its config: parameter count and training FLOPs."""

from __future__ import annotations

from dsbs_jax.model.t5 import T5Config


def num_params(config: T5Config) -> int:
    """Number of parameters of the network (what `init` creates)."""
    d, inner, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    mlp = len(config.mlp_activations) * d * m + m * d
    relpos = config.num_heads * config.relative_attention_num_buckets
    enc_layer = 2 * d + 4 * d * inner + mlp
    dec_layer = 3 * d + 8 * d * inner + mlp
    logits = 0 if config.logits_via_embedding else d * config.vocab_size
    return (
        config.vocab_size * d
        + relpos + config.num_encoder_layers * enc_layer + d
        + relpos + config.num_decoder_layers * dec_layer + d + logits
    )  # fmt: skip


def flops_per_example(config: T5Config, enc_len: int, dec_len: int) -> float:
    """Approximate training matmul FLOPs (forward + backward = 3x forward) for one example.

    Counts every dense projection, the attention score and value products over full (masked)
    lengths, and the logits; ignores norms, softmax, gathers and the optimizer.
    """
    d, inner, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    mlp = 2 * (len(config.mlp_activations) * d * m + m * d)
    enc_tok = 2 * 4 * d * inner + mlp + 2 * 2 * enc_len * inner
    dec_tok = (
        2 * 4 * d * inner + 2 * 2 * dec_len * inner  # self-attention
        + 2 * 2 * d * inner + 2 * 2 * enc_len * inner  # cross-attention: query, out, scores
        + mlp
    )  # fmt: skip
    cross_kv = 2 * 2 * d * inner  # per encoder token, per decoder layer
    forward = (
        enc_len * config.num_encoder_layers * enc_tok
        + dec_len * config.num_decoder_layers * dec_tok
        + enc_len * config.num_decoder_layers * cross_kv
        + dec_len * 2 * d * config.vocab_size
    )
    return 3.0 * forward


def flops_per_token(config: T5Config, enc_len: int, dec_len: int) -> float:
    """Training FLOPs per token, tokens counted as enc_len + dec_len (for MFU from tokens/s)."""
    return flops_per_example(config, enc_len, dec_len) / (enc_len + dec_len)
