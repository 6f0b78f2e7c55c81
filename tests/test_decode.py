"""Greedy and beam decoding with the cache agree with cache-free full forward passes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsbs_jax.model import decode
from dsbs_jax.model.t5 import T5Config, Transformer

CFG = T5Config(
    vocab_size=48,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    head_dim=16,
    mlp_dim=64,
    dropout_rate=0.1,  # must be off while decoding
)
MODEL = Transformer(CFG)
LENGTH = 10
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def setup():
    tok = jnp.ones((1, 4), jnp.int32)
    init = _jit(lambda: MODEL.init(jax.random.key(3), tok, tok, tok, enable_dropout=False))
    params = nn.unbox(init()["params"])
    rng = np.random.default_rng(0)
    enc = rng.integers(2, CFG.vocab_size, (6, 11))
    enc[1, 6:] = 0  # padded rows
    enc[4, 3:] = 0
    forward = _jit(
        lambda p, e, d: MODEL.apply({"params": p}, e, d, jnp.ones_like(d), enable_dropout=False)
    )
    # An EOS id the model actually emits, not in first position: decoding must stop on it.
    free = _reference_greedy(forward, params, enc, eos_id=-1)
    counts = np.bincount(free[:, 1:].ravel(), minlength=CFG.vocab_size)
    counts[0] = 0
    eos = int(np.argmax(counts))
    return params, enc, forward, eos


def _reference_greedy(forward, params, enc, eos_id):
    """Cache-free greedy: a full forward pass per step, argmax at the newest position."""
    out = np.zeros((enc.shape[0], LENGTH), np.int32)
    done = np.zeros(enc.shape[0], bool)
    for i in range(LENGTH):
        dec_in = np.pad(out, ((0, 0), (1, 0)))[:, :-1]
        nxt = np.argmax(np.asarray(forward(params, enc, dec_in))[:, i], axis=-1)
        out[:, i] = np.where(done, 0, nxt)
        done |= out[:, i] == eos_id
    return out


def _zeros_after_eos(tokens, eos):
    for row in np.asarray(tokens):
        hits = np.flatnonzero(row == eos)
        if hits.size:
            assert not row[hits[0] + 1 :].any(), row


def test_greedy_matches_cache_free_reference(setup):
    params, enc, forward, eos = setup
    for eos_id in (eos, -1):  # -1: never emitted, so every row runs to max length
        want = _reference_greedy(forward, params, enc, eos_id)
        got = np.asarray(decode.greedy_decode(MODEL, params, enc, LENGTH, eos_id=eos_id))
        np.testing.assert_array_equal(got, want)
    got = np.asarray(decode.greedy_decode(MODEL, params, enc, LENGTH, eos_id=eos))
    ended = (got == eos).any(axis=1)
    assert ended.any() and (got[ended, -1] == 0).any()  # some row stopped early
    _zeros_after_eos(got, eos)


def test_greedy_on_a_second_batch(setup):
    params, _, forward, eos = setup
    enc = np.random.default_rng(9).integers(2, CFG.vocab_size, (6, 11))
    want = _reference_greedy(forward, params, enc, eos)
    np.testing.assert_array_equal(decode.greedy_decode(MODEL, params, enc, LENGTH, eos), want)


def test_beam_of_one_equals_greedy(setup):
    params, enc, _, eos = setup
    greedy = decode.greedy_decode(MODEL, params, enc, LENGTH, eos_id=eos)
    tokens, scores = decode.beam_search(
        MODEL, params, enc, LENGTH, beam_size=1, alpha=0.0, eos_id=eos
    )
    np.testing.assert_array_equal(tokens, greedy)
    want = decode.score_sequences(MODEL, params, enc, greedy, alpha=0.0, eos_id=eos)
    np.testing.assert_allclose(scores, want, atol=1e-4)


def test_beam_of_four_scores_at_least_greedy(setup):
    params, enc, _, eos = setup
    greedy = decode.greedy_decode(MODEL, params, enc, LENGTH, eos_id=eos)
    greedy_score = decode.score_sequences(MODEL, params, enc, greedy, alpha=0.6, eos_id=eos)
    tokens, scores = decode.beam_search(
        MODEL, params, enc, LENGTH, beam_size=4, alpha=0.6, eos_id=eos
    )
    assert tokens.shape == (enc.shape[0], LENGTH) and scores.shape == (enc.shape[0],)
    assert np.all(np.asarray(scores) >= np.asarray(greedy_score) - 1e-5)
    assert np.any(np.asarray(scores) > np.asarray(greedy_score) + 1e-3)  # search did something
    # The reported score is the true length-normalised log-probability of the tokens returned.
    rescored = decode.score_sequences(MODEL, params, enc, tokens, alpha=0.6, eos_id=eos)
    np.testing.assert_allclose(scores, rescored, atol=1e-4)
    _zeros_after_eos(tokens, eos)


def test_length_penalty():
    np.testing.assert_allclose(decode.length_penalty(jnp.array(1), 0.6), 1.0)
    np.testing.assert_allclose(decode.length_penalty(jnp.array(7), 1.0), 2.0)
    np.testing.assert_allclose(decode.length_penalty(jnp.array(7), 0.0), 1.0)
