"""Optimizers (optax Adafactor as in T5, or AdamW) with their learning-rate schedules."""

from __future__ import annotations

import math

import gin
import jax.numpy as jnp
import optax

from dsbs_jax.errors import UserError

SCHEDULES = ("constant", "rsqrt", "cosine", "linear")


def _check_number(name: str, value, at_most: float = math.inf) -> None:
    """A finite number in [0, at_most] (any size when at_most is inf), or one line naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 <= value <= at_most):
        want = "a number >= 0" if at_most == math.inf else f"a number in [0, {at_most}]"
        raise UserError(f"{name}: must be {want}, got {value!r}")


@gin.configurable
def learning_rate_schedule(
    kind: str = "rsqrt",
    base_learning_rate: float = 1.0,
    warmup_steps: int = 10_000,
    total_steps: int = 0,
    end_fraction: float = 0.0,
) -> optax.Schedule:
    """T5's `rsqrt` (base / sqrt(max(step, warmup))), or `constant`, `cosine`, `linear`.

    cosine and linear warm up linearly for warmup_steps, then decay to end_fraction * base at
    total_steps (the trainer fills total_steps with TRAIN_STEPS when it is 0).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"learning_rate_schedule.kind must be one of {SCHEDULES}, got {kind!r}")
    # 0 is allowed: a run that keeps its initial parameters.
    _check_number("learning_rate_schedule.base_learning_rate", base_learning_rate)
    _check_number("learning_rate_schedule.end_fraction", end_fraction, at_most=1.0)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise UserError(
            f"learning_rate_schedule.warmup_steps: must be a whole number >= 0, got {warmup_steps!r}"
        )
    if kind == "constant":
        return optax.constant_schedule(base_learning_rate)
    if kind == "rsqrt":
        warm = max(1, warmup_steps)
        return lambda step: (
            base_learning_rate / jnp.sqrt(jnp.maximum(step, warm).astype(jnp.float32))
        )
    total = max(total_steps, warmup_steps + 1)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            base_learning_rate,
            max(1, warmup_steps),
            total,
            end_value=end_fraction * base_learning_rate,
        )
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, base_learning_rate, max(1, warmup_steps)),
            optax.linear_schedule(
                base_learning_rate, end_fraction * base_learning_rate, total - warmup_steps
            ),
        ],
        [max(1, warmup_steps)],
    )


@gin.configurable
def make_optimizer(
    schedule: optax.Schedule,
    name: str = "adafactor",
    clip_grad_norm: float | None = None,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    adafactor_decay_rate: float = 0.8,
    adafactor_clipping_threshold: float | None = 1.0,
) -> optax.GradientTransformation:
    """`adafactor` (T5X's settings: factored, parameter-scaled, no momentum) or `adamw`."""
    _check_number("make_optimizer.weight_decay", weight_decay)
    if clip_grad_norm is not None:
        _check_number("make_optimizer.clip_grad_norm", clip_grad_norm)
    if name == "adafactor":
        tx = optax.adafactor(
            learning_rate=schedule,
            decay_rate=adafactor_decay_rate,
            clipping_threshold=adafactor_clipping_threshold,
            multiply_by_parameter_scale=True,
            weight_decay_rate=weight_decay or None,
        )
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        raise ValueError(f"make_optimizer.name must be 'adafactor' or 'adamw', got {name!r}")
    if clip_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), tx)
    return tx


def from_gin(train_steps: int, cache: dict | None = None):
    """The optimizer and schedule that gin configures (`make_optimizer`, `learning_rate_schedule`,
    total_steps defaulting to TRAIN_STEPS). Kept in `cache` under those settings, so runs with
    the same settings get the same objects (and so share their compiled programs)."""
    key = (
        "optimizer",
        train_steps,
        repr(sorted(gin.get_bindings(learning_rate_schedule).items())),
        repr(sorted(gin.get_bindings(make_optimizer).items())),
    )
    if cache is not None and key in cache:
        return cache[key]
    schedule = learning_rate_schedule(total_steps=train_steps)
    made = (make_optimizer(schedule), schedule)
    if cache is not None:
        cache[key] = made
    return made
