"""Attention kernels: 3-D in our network, 2-D in T5X; the one rule between the two layouts.

Ours (`t5.Transformer`): query/key/value [embed, heads, head_dim], out [heads, head_dim, embed].
T5X's `DenseGeneral` stores them joined: [embed, heads * head_dim] and [heads * head_dim, embed]
(logical axis `joined_kv`), a row-major reshape of ours. T5X checkpoints are read and written in
its layout (`interop.t5x`), and the optimizer sees our kernels in it (`train.step`, so that
Adafactor factors them as T5X does).
"""

from __future__ import annotations

JOIN_LAST = ("query", "key", "value")  # [embed, heads, head_dim] <-> [embed, heads * head_dim]
JOIN_FIRST = ("out",)  # [heads, head_dim, embed] <-> [heads * head_dim, embed]


def joined_shape(proj: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """T5X's 2-D shape of the kernel of projection `proj` whose shape is ours (3-D); any other
    shape or projection is returned as it is."""
    shape = tuple(shape)
    if len(shape) != 3:
        return shape
    if proj in JOIN_LAST:
        return (shape[0], shape[1] * shape[2])
    if proj in JOIN_FIRST:
        return (shape[0] * shape[1], shape[2])
    return shape


def split_shape(proj: str, shape: tuple[int, ...], heads: int) -> tuple[int, ...]:
    """Our 3-D shape of the kernel of projection `proj` whose shape is T5X's (2-D), with `heads`
    heads; any other shape or projection is returned as it is."""
    shape = tuple(shape)
    if len(shape) != 2:
        return shape
    if proj in JOIN_LAST:
        return (shape[0], heads, shape[1] // heads)
    if proj in JOIN_FIRST:
        return (heads, shape[0] // heads, shape[1])
    return shape


def joined_spec(proj: str, spec: tuple) -> tuple:
    """The partition spec of a 3-D kernel (ours) for its 2-D view (T5X's): the joined axes are
    sharded as the first of them that is."""
    spec = tuple(spec) + (None,) * (3 - len(spec))
    if proj in JOIN_LAST:
        return (spec[0], spec[1] or spec[2])
    if proj in JOIN_FIRST:
        return (spec[0] or spec[1], spec[2])
    return spec
