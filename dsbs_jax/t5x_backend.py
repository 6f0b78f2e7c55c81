"""Our mixtures under real T5X (`t5x/train.py`): task-tagged data, our feature converter, and a
model whose loss is the paper's `sum_t rate_t * mean token loss of task t`.

T5X builds its input with `seqio.get_dataset(mixture, ..., feature_converter=
model.FEATURE_CONVERTER_CLS(pack=..., use_custom_packing_ops=...))` and its loss in
`EncoderDecoderModel.loss_fn` as `sum(token_loss * decoder_loss_weights) / LNF` (LNF: the
model's `loss_normalizing_factor`; None in T5X's t5_1_1 gins, so the raw weighted sum). Three
pieces adapt that to our loss weighting (see gin_configs/t5x/ and docs/pretrained.md):

- `task_tagged_mixture(name, weighting)`: registers and returns `<name>_t5x_<weighting>`, the
  same tasks with every target token tagged by its task id (`task_ids`, 1-based, in mixture
  order). Under `exact` its tasks are drawn equally often, each example on its own, so a batch
  can lack one kind (then its loss is the other task's term alone; our native exact pipeline
  pairs them instead); under `sampling` at the mixture's rates.
- `TaskWeightedFeatureConverter`: our `TaskWeightedEncDecFeatureConverter` with the weights
  taken from the mixture (`exact`: the normalised rates; `sampling`: 1), built the way T5X
  builds converters. Examples without `task_ids` (T5X's per-task training evaluation and its
  inference evaluator read the plain tasks) get the extra id `len(tasks) + 1`, weight 1.
- `TaskWeightedEncoderDecoderModel` (needs t5x): `EncoderDecoderModel` whose loss divides each
  token's weight by its task's token count in the batch, so that the loss is exactly
  `sum_t w_t * mean_t` (our `exact` mode), and which logs `loss/<task>` for every task.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from dsbs_jax import weighting as weighting_lib
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.features import TASK_IDS, TaskWeightedEncDecFeatureConverter
from dsbs_jax.train import losses as losses_lib


def import_module(module: str | None) -> None:
    """Imports MIXTURE_OR_TASK_MODULE (T5X's macro) so that its tasks are registered."""
    if module:
        importlib.import_module(module)


def tasks_and_weights(
    name: str, weighting: str = "exact", mixture_or_task_module: str | None = None
) -> tuple[list[str], list[float]]:
    """The task names of a mixture (or task) in order, and each task's per-token loss weight."""
    import_module(mixture_or_task_module)
    tasks, rates = weighting_lib.tasks_and_rates(name)
    return [t.name for t in tasks], weighting_lib.task_weights(rates, weighting)


def _tag(index: int):
    def tag(ex):
        ex = dict(ex)
        ex[TASK_IDS] = tf.fill(tf.shape(ex["targets"]), tf.constant(index + 1, tf.int32))
        return ex

    return tag


class TaskTaggedMixture(seqio.Mixture):
    """A mixture whose examples carry `task_ids` (one per target token) through seqio."""

    def get_task_dataset(self, task, output_feature_keys, *args, **kwargs) -> tf.data.Dataset:
        ds = super().get_task_dataset(task, output_feature_keys, *args, **kwargs)
        index = [t.name for t in self.tasks].index(task.name)
        return ds.map(_tag(index), num_parallel_calls=tf.data.AUTOTUNE)


def task_tagged_mixture(
    name: str, weighting: str = "exact", mixture_or_task_module: str | None = None
) -> str:
    """Registers `<name>_t5x_<weighting>` (a `TaskTaggedMixture`) and returns that name."""
    names, _ = tasks_and_weights(name, weighting, mixture_or_task_module)
    _, rates = _rates(name)
    if weighting == "exact":
        rates = [1.0] * len(names)
    tagged = f"{name}_t5x_{weighting}"
    seqio.MixtureRegistry.remove(tagged)
    seqio.MixtureRegistry.add_provider(tagged, TaskTaggedMixture(tagged, list(zip(names, rates))))
    return tagged


def _rates(name: str) -> tuple[list[str], list[float]]:
    tasks, rates = weighting_lib.tasks_and_rates(name)
    return [t.name for t in tasks], rates


def task_vocabulary(
    mixture_or_task_name: str,
    vocabulary_path: str | None = None,
    mixture_or_task_module: str | None = None,
):
    """The targets vocabulary of a mixture, after pointing every dsbs task at `vocabulary_path`.

    T5X checks that the model's vocabulary equals the tasks'; this gives it theirs. With a path
    (e.g. the public 32k T5 sentencepiece model) every dsbs task uses that model instead.
    """
    import_module(mixture_or_task_module)
    tasks_lib.bind_tasks(mixture_or_task_name, vocabulary_path=vocabulary_path)
    return vocab_lib.get_vocabulary(mixture_or_task_name)


class TaskWeightedFeatureConverter(TaskWeightedEncDecFeatureConverter):
    """Our converter as T5X constructs it: `cls(pack=..., use_custom_packing_ops=...)`.

    Bind `mixture_or_task_name` and `weighting` in gin (the run gin does, from
    MIXTURE_OR_TASK_NAME and LOSS_WEIGHTING); the weights follow from the mixture's rates.
    """

    def __init__(
        self,
        pack: bool = True,
        use_custom_packing_ops: bool = False,
        mixture_or_task_name: str | None = None,
        weighting: str = "exact",
        task_weights: Sequence[float] | None = None,
        mixture_or_task_module: str | None = None,
        **kwargs,
    ):
        if task_weights is None:
            task_weights = (
                tasks_and_weights(mixture_or_task_name, weighting, mixture_or_task_module)[1]
                if mixture_or_task_name
                else []
            )
        self.unknown_task_id = len(task_weights) + 1
        super().__init__(
            [*task_weights, 1.0],
            pack=pack,
            use_custom_packing_ops=use_custom_packing_ops,
            **kwargs,
        )

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        if TASK_IDS not in ds.element_spec:
            ds = ds.map(_tag(self.unknown_task_id - 1), num_parallel_calls=tf.data.AUTOTUNE)
        if task_feature_lengths is not None and TASK_IDS not in task_feature_lengths:
            task_feature_lengths = {
                **task_feature_lengths,
                TASK_IDS: task_feature_lengths["targets"],
            }
        return super().__call__(ds, task_feature_lengths)


# ----------------------------------------------------------------------------------------------
# The model (only where t5x is installed)

try:
    from t5x import models as _t5x_models
except ImportError:  # pragma: no cover - the native trainer needs none of this
    _t5x_models = None


if _t5x_models is not None:
    import jax.numpy as jnp
    from clu import metrics as clu_metrics
    from t5x import losses as _t5x_losses

    class TaskWeightedEncoderDecoderModel(_t5x_models.EncoderDecoderModel):
        """T5X's EncoderDecoderModel with our `exact` loss: sum_t w_t * (mean loss of task t).

        Each token's weight (its task's rate, from the converter) is divided by the number of
        that task's target tokens in the (global) batch, and T5X's weighted cross entropy is
        taken with those weights and no further normalisation. z-loss and label smoothing act
        per token as in T5X. Batches without `decoder_task_ids` fall back to T5X's loss.
        """

        def __init__(
            self,
            *args,
            mixture_or_task_name: str | None = None,
            weighting: str = "exact",
            mixture_or_task_module: str | None = None,
            **kwargs,
        ):
            super().__init__(*args, **kwargs)
            self._task_names = (
                tasks_and_weights(mixture_or_task_name, weighting, mixture_or_task_module)[0]
                if mixture_or_task_name
                else []
            )
            self._weighting = weighting

        def loss_fn(self, params, batch, dropout_rng):
            if "decoder_task_ids" not in batch or not self._task_names:
                return super().loss_fn(params, batch, dropout_rng)
            logits = self._compute_logits(params, batch, dropout_rng)
            targets = batch["decoder_target_tokens"]
            if self._weighting == "exact":
                weights, lnf = self._exact_weights(batch), None
            else:  # T5X's own loss: sum(token loss * weight) / loss_normalizing_factor
                lnf, weights = _t5x_losses.get_loss_normalizing_factor_and_weights(
                    self._loss_normalizing_factor, batch
                )
            loss, z_loss, _ = _t5x_losses.compute_weighted_cross_entropy(
                logits,
                targets=targets,
                weights=weights,
                label_smoothing=self._label_smoothing,
                z_loss=self._z_loss,
                loss_normalizing_factor=lnf,
            )
            real = (targets > 0).astype(jnp.float32)
            segment_ids = {
                k[: -len("_segment_ids")]: v for k, v in batch.items() if k.endswith("_segment_ids")
            }
            metrics = self._compute_metrics(
                logits=logits, targets=targets, mask=real, loss=loss, z_loss=z_loss,
                segment_ids=segment_ids or None,
            )  # fmt: skip
            metrics.update(self._task_metrics(logits, batch))
            return loss, metrics

        def _exact_weights(self, batch):
            """Each token's rate divided by its task's token count in the batch."""
            task_ids = batch["decoder_task_ids"]
            rate = batch["decoder_loss_weights"].astype(jnp.float32)
            per_token_count = jnp.zeros_like(rate)
            # Task ids 1..n, plus n + 1: tokens of untagged examples (weight 1), a group alone.
            for t in range(1, len(self._task_names) + 2):
                mask = (task_ids == t).astype(jnp.float32)
                per_token_count = per_token_count + mask * mask.sum()
            return rate / jnp.maximum(per_token_count, 1.0)

        def _task_metrics(self, logits, batch):
            """loss/<task>: mean token cross entropy of each task; tokens/<task>: its count."""
            ce = losses_lib.token_losses(logits, batch["decoder_target_tokens"])
            out = {}
            for t, name in enumerate(self._task_names, start=1):
                mask = (batch["decoder_task_ids"] == t).astype(jnp.float32)
                n = mask.sum()
                out[f"loss/{name}"] = clu_metrics.Average(total=(ce * mask).sum(), count=n)
                out[f"tokens/{name}"] = clu_metrics.Average(total=n, count=jnp.ones((), jnp.int32))
            return out
