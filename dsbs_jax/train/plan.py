"""A run's train step, planned: what the program depends on, resolved from the run's settings.

`trainer.train` builds its step from `plan_step`, and `dsbs compile` (`aot.plan_from_gin`)
compiles the step of the same plan for a TPU slice: one function, so the plan is of the program
that runs.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import optax
import seqio

from dsbs_jax import weighting
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import optimizers
from dsbs_jax.train import step as step_lib


def model_config_for(config: T5Config, mixture_or_task_name: str) -> T5Config:
    """Fills vocab_size from the task's vocabulary (rounded up to 128) when the config leaves it 0."""
    if getattr(config, "vocab_size", 0):
        return config
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    size = provider.output_features["targets"].vocabulary.vocab_size
    return dataclasses.replace(config, vocab_size=int(math.ceil(size / 128) * 128))


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Everything the train step's program depends on, resolved from a run's settings."""

    model_config: T5Config
    tx: optax.GradientTransformation
    schedule: optax.Schedule | None
    num_tasks: int
    loss_weighting: str
    z_loss: float
    batch_size: int
    lengths: tuple[int, int]  # encoder, decoder


def plan_step(
    mixture_or_task_name: str,
    task_feature_lengths: dict[str, int],
    train_steps: int,
    batch_size: int,
    model_config: T5Config,
    loss_weighting: str,
    z_loss: float,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate_fn: optax.Schedule | None = None,
    cache: dict | None = None,
) -> StepPlan:
    """The step a run trains with: `train` builds it and `dsbs compile` compiles it, both from
    this one function (so the plan is of the program that runs). The optimizer and schedule come
    from gin (`make_optimizer`, `learning_rate_schedule`) unless given."""
    weighting.check_weighting(loss_weighting)
    tasks, _ = weighting.tasks_and_rates(mixture_or_task_name)  # an unknown name: one line
    if optimizer is None:
        optimizer, learning_rate_fn = optimizers.from_gin(train_steps, cache)
    return StepPlan(
        model_config=model_config_for(model_config, mixture_or_task_name),
        tx=optimizer,
        schedule=learning_rate_fn,
        num_tasks=len(tasks),
        loss_weighting=loss_weighting,
        z_loss=z_loss,
        batch_size=batch_size,
        lengths=(task_feature_lengths["inputs"], task_feature_lengths["targets"]),
    )


def build_step(plan: StepPlan, mesh, rules, cache: dict | None = None) -> step_lib.Programs:
    """`step.build_programs` for a plan on a mesh; kept in `cache` for plans alike (a sweep's
    runs differ in seed and data, not in program), so they are traced and compiled once."""
    cache = {} if cache is None else cache
    key = ("train", plan, mesh, tuple(rules))
    if key not in cache:
        with mesh, nn.logical_axis_rules(rules):
            cache[key] = step_lib.build_programs(
                Transformer(plan.model_config), plan.tx, plan.schedule, plan.num_tasks,
                plan.loss_weighting, plan.z_loss, mesh, rules, *plan.lengths,
            )  # fmt: skip
    return cache[key]
