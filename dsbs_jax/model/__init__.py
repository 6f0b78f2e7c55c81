"""The T5 v1.1 student network (`t5`), its decoding (`decode`) and sizes (`counts`); the dropout
plan (`dropout`) and CPU kernels (`cpu_kernels`) it runs."""

from dsbs_jax.model.counts import flops_per_example, flops_per_token, num_params
from dsbs_jax.model.decode import beam_search, greedy_decode, length_penalty, score_sequences
from dsbs_jax.model.t5 import T5Config, Transformer

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
