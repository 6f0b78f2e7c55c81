"""The feature converter: packing plus per-token float loss weights from each task's rate.

It extends seqio's encoder-decoder converter. Every example carries `task_ids`, one int per
target token (1-based index of its task in the mixture). After packing, the converter emits

- `decoder_loss_weights` (float32): the rate of the token's task, 0 on padding;
- `decoder_task_ids` (int32): the token's task, 0 on padding,

so the loss can take each task's mean token loss and weight it by its rate: the paper's
`alpha * L_label + (1 - alpha) * L_rationale` for a dsbs mixture (`exact` weighting). Under
`sampling` weighting the rates set how often each task is drawn and every weight is 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

TASK_IDS = "task_ids"


def add_task_ids(ds: tf.data.Dataset, task_index: int) -> tf.data.Dataset:
    """Tags every target token of every example with the (1-based) task id `task_index + 1`."""

    def tag(ex):
        ex = dict(ex)
        ex[TASK_IDS] = tf.fill(tf.shape(ex["targets"]), tf.constant(task_index + 1, tf.int32))
        return ex

    return ds.map(tag, num_parallel_calls=tf.data.AUTOTUNE)


class TaskWeightedEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's EncDecFeatureConverter with per-token task ids and rate-valued loss weights.

    Args:
      task_weights: the loss weight of each task, in task-id order (task id i + 1 -> weights[i]).
      pack: pack several examples into each row (seqio's packing).
    """

    TASK_FEATURES = {
        "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        TASK_IDS: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32),
        "decoder_task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def __init__(self, task_weights: Sequence[float] = (1.0,), pack: bool = True, **kwargs):
        super().__init__(pack=pack, **kwargs)
        self._task_weights = [float(w) for w in task_weights]

    @property
    def task_weights(self) -> list[float]:
        return list(self._task_weights)

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        lengths = dict(task_feature_lengths)
        lengths.setdefault(TASK_IDS, lengths["targets"])
        return super().__call__(ds, lengths)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        ds = self._pack_or_pad(ds, task_feature_lengths)
        table = tf.constant([0.0, *self._task_weights], tf.float32)

        def convert(features):
            d = dict(self._convert_example(features))
            task_ids = tf.cast(features[TASK_IDS], tf.int32)
            # Trimming can cut targets and task ids alike; padding is 0 in both.
            task_ids = tf.where(features["targets"] > 0, task_ids, 0)
            d["decoder_task_ids"] = task_ids
            d["decoder_loss_weights"] = tf.gather(table, task_ids)
            return d

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["decoder_task_ids"] = task_feature_lengths["targets"]
        return lengths


# ----------------------------------------------------------------------------------------------
# A numpy packer for examples whose tasks travel together (benchmarks, host-side pipelines)


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
    import numpy as np

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
    import numpy as np

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
