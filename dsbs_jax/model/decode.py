"""Greedy and beam-search decoding for `t5.Transformer` with a key/value cache.

The encoder runs once; the decoder then takes one token per step, reading and extending the
'cache' collection (`cached_key`, `cached_value`, `cache_index` in each self-attention and the
decoder's `position_index`). The decoder start token is 0 and tokens after EOS are 0 (padding).
Each function compiles once per (model, max_decode_length[, beam_size]) and input shape;
`eos_id` and `alpha` are traced, so changing them does not recompile. The network knows no
vocabulary: the caller names the EOS id (`dsbs_jax.data.text.EOS_ID` for ours).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from dsbs_jax.model.t5 import Transformer

Array = jax.Array
_NEG = -1.0e7  # score of an empty slot; far below any real log-probability


def _encode(model: Transformer, params: Any, tokens: Array) -> Array:
    return model.apply({"params": params}, tokens, enable_dropout=False, method=Transformer.encode)


def _init_cache(model: Transformer, params: Any, encoded: Array, tokens: Array, length: int):
    """A zero cache for decoding `length` positions (shapes from a traced full pass)."""
    dummy = jnp.zeros((encoded.shape[0], length), jnp.int32)

    def full_pass(params, encoded, tokens):
        _, variables = model.apply(
            {"params": params},
            encoded,
            tokens,
            dummy,
            dummy,
            enable_dropout=False,
            decode=True,
            max_decode_length=length,
            mutable=["cache"],
            method=Transformer.decode,
        )
        return variables["cache"]

    shapes = jax.eval_shape(full_pass, params, encoded, tokens)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(model, params, cache, encoded, enc_tokens, last, length):
    """Log-probabilities [batch, vocab] of the next token after `last` [batch]."""
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        encoded,
        enc_tokens,
        last[:, None],
        last[:, None],
        enable_dropout=False,
        decode=True,
        max_decode_length=length,
        mutable=["cache"],
        method=Transformer.decode,
    )
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), variables["cache"]


def length_penalty(length: Array, alpha: float) -> Array:
    """GNMT brevity penalty ((5 + length) / 6) ** alpha, as in T5X's beam search."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


# ----------------------------------------------------------------------------------------------
# Greedy


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy(model, params, enc_tokens, length, eos_id):
    batch = enc_tokens.shape[0]
    encoded = _encode(model, params, enc_tokens)
    cache = _init_cache(model, params, encoded, enc_tokens, length)
    out = jnp.zeros((batch, length), jnp.int32)
    state = (jnp.array(0), cache, out, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))

    def cond(state):
        i, _, _, _, done = state
        return jnp.logical_and(i < length, jnp.logical_not(jnp.all(done)))

    def body(state):
        i, cache, out, last, done = state
        logp, cache = _step(model, params, cache, encoded, enc_tokens, last, length)
        nxt = jnp.where(done, 0, jnp.argmax(logp, axis=-1).astype(jnp.int32))
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        return i + 1, cache, out, nxt, jnp.logical_or(done, nxt == eos_id)

    return jax.lax.while_loop(cond, body, state)[2]


def greedy_decode(
    model: Transformer,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    eos_id: int,
) -> Array:
    """Greedy decoding: tokens [batch, max_decode_length], 0 after each row's EOS."""
    return _greedy(
        model, params, jnp.asarray(encoder_input_tokens), max_decode_length, jnp.int32(eos_id)
    )


# ----------------------------------------------------------------------------------------------
# Beam search


def _gather_beams(x: Array, index: Array) -> Array:
    """x [batch, beams, ...], index [batch, n] -> [batch, n, ...]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _reorder_cache(cache, parent: Array, batch: int, beams: int):
    """Moves each cache row to its new beam: rows are (batch * beams), parent [batch, beams]."""

    def one(x):
        if x.ndim == 0:  # cache_index / position_index: shared by all rows
            return x
        y = x.reshape((batch, beams) + x.shape[1:])
        return _gather_beams(y, parent).reshape(x.shape)

    return jax.tree.map(one, cache)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _beam(model, params, enc_tokens, length, beams, alpha, eos_id):
    batch = enc_tokens.shape[0]
    enc_tokens = jnp.repeat(enc_tokens, beams, axis=0)  # rows (b, k) flattened, beam minor
    encoded = _encode(model, params, enc_tokens)
    cache = _init_cache(model, params, encoded, enc_tokens, length)
    seqs = jnp.zeros((batch, beams, length), jnp.int32)
    live_logp = jnp.tile(jnp.array([0.0] + [_NEG] * (beams - 1)), (batch, 1))
    state = dict(
        i=jnp.array(0),
        cache=cache,
        live_seqs=seqs,
        live_logp=live_logp,
        fin_seqs=seqs,
        fin_scores=jnp.full((batch, beams), _NEG),
        fin_flags=jnp.zeros((batch, beams), bool),
    )
    best_penalty = length_penalty(jnp.array(length), alpha)

    def cond(s):
        # Stop when no live beam can still beat the worst finished one (alpha >= 0).
        bound = s["live_logp"][:, 0] / best_penalty
        worst = jnp.min(jnp.where(s["fin_flags"], s["fin_scores"], _NEG * 10), axis=1)
        settled = jnp.logical_and(jnp.all(s["fin_flags"], axis=1), worst >= bound)
        return jnp.logical_and(s["i"] < length, jnp.logical_not(jnp.all(settled)))

    def body(s):
        i = s["i"]
        last = jnp.where(i > 0, s["live_seqs"][:, :, jnp.maximum(i - 1, 0)], 0)
        logp, cache = _step(
            model, params, s["cache"], encoded, enc_tokens, last.reshape(-1), length
        )
        vocab = logp.shape[-1]
        cand = s["live_logp"][:, :, None] + logp.reshape(batch, beams, vocab)
        cand_logp, flat = jax.lax.top_k(cand.reshape(batch, beams * vocab), 2 * beams)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand_seqs = _gather_beams(s["live_seqs"], parent)
        cand_seqs = jax.lax.dynamic_update_slice(cand_seqs, token[:, :, None], (0, 0, i))
        ended = token == eos_id

        # Finished: the best `beams` of the old finished and the candidates that just ended.
        cand_scores = jnp.where(ended, cand_logp / length_penalty(i + 1, alpha), _NEG)
        all_scores = jnp.concatenate([s["fin_scores"], cand_scores], axis=1)
        all_flags = jnp.concatenate([s["fin_flags"], ended], axis=1)
        all_seqs = jnp.concatenate([s["fin_seqs"], cand_seqs], axis=1)
        fin_scores, keep = jax.lax.top_k(all_scores, beams)

        # Live: the best `beams` candidates that did not end.
        live_logp, pick = jax.lax.top_k(jnp.where(ended, _NEG, cand_logp), beams)
        return dict(
            i=i + 1,
            cache=_reorder_cache(cache, _gather_beams(parent, pick), batch, beams),
            live_seqs=_gather_beams(cand_seqs, pick),
            live_logp=live_logp,
            fin_seqs=_gather_beams(all_seqs, keep),
            fin_scores=fin_scores,
            fin_flags=_gather_beams(all_flags, keep),
        )

    s = jax.lax.while_loop(cond, body, state)
    any_fin = s["fin_flags"][:, 0]
    tokens = jnp.where(any_fin[:, None], s["fin_seqs"][:, 0], s["live_seqs"][:, 0])
    live_score = s["live_logp"][:, 0] / best_penalty
    return tokens, jnp.where(any_fin, s["fin_scores"][:, 0], live_score)


def beam_search(
    model: Transformer,
    params: Any,
    encoder_input_tokens: Array,
    max_decode_length: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    *,
    eos_id: int,
) -> tuple[Array, Array]:
    """Beam search: best tokens [batch, max_decode_length] (0 after EOS) and scores [batch].

    A score is the sequence log-probability (EOS included) divided by `length_penalty`. A row
    with no finished beam returns its best live beam, scored at full length.
    """
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    return _beam(
        model,
        params,
        jnp.asarray(encoder_input_tokens),
        max_decode_length,
        beam_size,
        jnp.float32(alpha),
        jnp.int32(eos_id),
    )


# ----------------------------------------------------------------------------------------------
# Scoring


@functools.partial(jax.jit, static_argnums=(0,))
def _score(model, params, enc_tokens, tokens, alpha, eos_id):
    length = tokens.shape[1]
    is_eos = tokens == eos_id
    first_eos = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), length - 1)
    valid = jnp.arange(length)[None, :] <= first_eos[:, None]
    dec_in = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    logits = model.apply(
        {"params": params},
        enc_tokens,
        dec_in,
        jnp.ones_like(tokens),  # no target padding: every position is scored as decoded
        enable_dropout=False,
    )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tok_logp = jnp.take_along_axis(logp, tokens[:, :, None], axis=-1)[:, :, 0]
    total = jnp.sum(jnp.where(valid, tok_logp, 0.0), axis=1)
    return total / length_penalty(first_eos + 1, alpha)


def score_sequences(
    model: Transformer,
    params: Any,
    encoder_input_tokens: Array,
    tokens: Array,
    alpha: float = 0.6,
    *,
    eos_id: int,
) -> Array:
    """Beam-search score [batch] of decoded `tokens` [batch, length] (up to the first EOS)."""
    return _score(
        model,
        params,
        jnp.asarray(encoder_input_tokens),
        jnp.asarray(tokens),
        jnp.float32(alpha),
        jnp.int32(eos_id),
    )
