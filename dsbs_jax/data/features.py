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
