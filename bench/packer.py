"""A numpy packer for examples whose tasks travel together: the benchmarks' host-side pipeline.

(The trainer packs with seqio; this packer is what bench/train_throughput.py feeds its own step.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _fits(row_fill, seg_lens, enc_len: int, dec_len: int) -> list[int] | None:
    """First-fit rows for the segments of one example (all or nothing), or None."""
    fill = [list(r) for r in row_fill]
    placed = []
    for enc, dec in seg_lens:
        for i, (e, d) in enumerate(fill):
            if e + enc <= enc_len and d + dec <= dec_len:
                fill[i][0] += enc
                fill[i][1] += dec
                placed.append(i)
                break
        else:
            return None
    return placed


def pack_examples(
    examples,
    rows: int,
    enc_len: int,
    dec_len: int,
    task_weights: Sequence[float],
    window: int = 64,
):
    """Packs examples into fixed-shape batches of `rows` rows, all tasks of an example together.

    `examples` yields, per example, a list of (inputs, targets, task_id) int arrays (task ids
    1-based; inputs and targets end with EOS and are truncated to the row lengths). Each batch is
    filled first-fit from a look-ahead window of `window` examples (so the order changes only
    locally) and is a dict with the trainer's batch keys plus `num_examples`. Decoder inputs are
    the targets shifted right per segment with 0 as start; positions restart in each segment.
    """
    table = np.asarray([0.0, *task_weights], np.float32)
    it = iter(examples)
    pending: list = []
    exhausted = False
    while True:
        while not exhausted and len(pending) < window:
            try:
                segs = next(it)
            except StopIteration:
                exhausted = True
                break
            pending.append(
                [(np.asarray(i[:enc_len]), np.asarray(t[:dec_len]), int(k)) for i, t, k in segs]
            )
        if not pending:
            return
        fill = [[0, 0] for _ in range(rows)]
        chosen, rest = [], []
        for segs in pending:
            placed = _fits(fill, [(len(i), len(t)) for i, t, _ in segs], enc_len, dec_len)
            if placed is None:
                rest.append(segs)
                continue
            for (i, t, _), r in zip(segs, placed):
                fill[r][0] += len(i)
                fill[r][1] += len(t)
            chosen.append((segs, placed))
        if not chosen:
            raise ValueError(f"an example does not fit {rows} rows of {enc_len}/{dec_len}")
        pending = rest
        yield _assemble(chosen, rows, enc_len, dec_len, table)


def _assemble(chosen, rows: int, enc_len: int, dec_len: int, table):
    b = {
        "encoder_input_tokens": np.zeros((rows, enc_len), np.int32),
        "encoder_segment_ids": np.zeros((rows, enc_len), np.int32),
        "encoder_positions": np.zeros((rows, enc_len), np.int32),
        "decoder_target_tokens": np.zeros((rows, dec_len), np.int32),
        "decoder_input_tokens": np.zeros((rows, dec_len), np.int32),
        "decoder_segment_ids": np.zeros((rows, dec_len), np.int32),
        "decoder_positions": np.zeros((rows, dec_len), np.int32),
        "decoder_task_ids": np.zeros((rows, dec_len), np.int32),
    }
    enc_at, dec_at, seg = [0] * rows, [0] * rows, [0] * rows
    for segs, placed in chosen:
        for (inp, tgt, task), r in zip(segs, placed):
            seg[r] += 1
            e0, e1 = enc_at[r], enc_at[r] + len(inp)
            d0, d1 = dec_at[r], dec_at[r] + len(tgt)
            b["encoder_input_tokens"][r, e0:e1] = inp
            b["encoder_segment_ids"][r, e0:e1] = seg[r]
            b["encoder_positions"][r, e0:e1] = np.arange(len(inp))
            b["decoder_target_tokens"][r, d0:d1] = tgt
            b["decoder_input_tokens"][r, d0 + 1 : d1] = tgt[:-1]
            b["decoder_segment_ids"][r, d0:d1] = seg[r]
            b["decoder_positions"][r, d0:d1] = np.arange(len(tgt))
            b["decoder_task_ids"][r, d0:d1] = task
            enc_at[r], dec_at[r] = e1, d1
    b["decoder_loss_weights"] = table[b["decoder_task_ids"]]
    b["num_examples"] = len(chosen)
    return b
