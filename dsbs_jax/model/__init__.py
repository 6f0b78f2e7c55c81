"""The T5 v1.1 student network (`t5`) and its decoding (`decode`)."""

from dsbs_jax.model.decode import beam_search, greedy_decode, length_penalty, score_sequences
from dsbs_jax.model.t5 import (
    T5Config,
    Transformer,
    flops_per_example,
    flops_per_token,
    num_params,
)

__all__ = [
    "T5Config",
    "Transformer",
    "beam_search",
    "flops_per_example",
    "flops_per_token",
    "greedy_decode",
    "length_penalty",
    "num_params",
    "score_sequences",
]
