"""The native trainer: one linear `train()` you can read top to bottom.

Sections: set-up and config (with the step's plan, `plan_step`, which `dsbs compile` shares),
mesh, checkpoints, data, programs, state (fresh or restored), hooks, the train loop. The update
step itself is `train.step`; everything else the loop does (metrics, checkpoints, evaluation,
early stopping, a caller's own scoring) is a hook (`train.hooks`). Configured by gin with T5X's macros (see gin_configs/runs/*.gin); `dsbs train`
calls it, and so does every run of a sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
from clu import metric_writers

from dsbs_jax import run_dir, weighting
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.errors import UserError
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import (
    checkpoints,
    checks,
    evaluation,
    input_pipeline,
    partitioning,
)
from dsbs_jax.train import hooks as hooks_lib
from dsbs_jax.train import plan as plan_lib
from dsbs_jax.train import step as step_lib

log = logging.getLogger("dsbs.train")


@dataclasses.dataclass
class TrainResult:
    """What a run ended with: its last step, last metrics and the final evaluation, and how
    fast it stepped (`step_seconds`: seconds per step after its first logged window, which
    holds the compile; None when it logged fewer than two windows)."""

    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    test_metrics: dict[str, float]
    model_dir: str
    step_seconds: float | None = None


def settings_from_gin() -> dict:
    """The arguments `train` runs with under the current gin config: its own defaults, overridden
    by gin's bindings (macros and references evaluated). `dsbs compile` plans from these."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(train).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return defaults | gin.get_bindings(train, resolve_references=True)


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: dict[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = 64,
    model_config: T5Config = gin.REQUIRED,
    loss_weighting: str = "exact",
    random_seed: int = 0,
    use_cached_tasks: bool = False,
    initial_checkpoint_path: str | None = None,
    train_split: str = "train",
    eval_period: int = 1000,
    eval_split: str = "validation",
    eval_examples: int | None = None,
    eval_batch_size: int = 64,
    test_split: str | None = "test",
    checkpoint_period: int = 1000,
    checkpoint_every_secs: float | None = 1800.0,
    keep_checkpoints: int | None = 3,
    log_every: int = 50,
    z_loss: float = 1e-4,
    pack: bool = True,
    check_lengths: bool = True,
    input_threads: int = 0,
    vocabulary_path: str | None = None,
    data_dir: str | None = None,
    hooks: Sequence[hooks_lib.Hook] = (),
    mesh: jax.sharding.Mesh | None = None,
    axis_rules: partitioning.LogicalRules | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate_fn: optax.Schedule | None = None,
    programs: dict | None = None,
) -> TrainResult:
    """Trains the student and returns its final metrics. Resumes from MODEL_DIR when it has checkpoints.

    train_split may slice the training data the TFDS way (`train[:25%]`, `train[:500]`) for
    data-fraction sweeps; eval_split and test_split are scored with the tasks' metrics (against
    gold labels) every eval_period steps and at the end. `data_dir` and `vocabulary_path` say
    where this run's prepared data and sentencepiece model are (None: the defaults of
    `dsbs_jax.data.paths` and the dataset's own vocabulary). `check_lengths`: say how many
    examples TASK_FEATURE_LENGTHS cuts (from the first 200 of each task) before training.
    `input_threads`: tf.data's threads (0: one private thread on a host of up to 4 cores, where
    tf.data's own pool slows the steps by competing with XLA for the cores; its own autotuned
    pool on a larger host). `hooks` run after the built-in ones
    that evaluate the validation split, before logging and checkpointing. `programs`: a dict a
    caller keeps across runs alike (a sweep), so their jitted programs are traced once.
    """
    # ---------------------------------------------------------------- set-up and config
    weighting.check_weighting(loss_weighting)
    weighting.tasks_and_rates(mixture_or_task_name)  # an unknown name fails here, in one line
    tasks_lib.bind_tasks(mixture_or_task_name, data_dir, vocabulary_path)
    # Everything is checked before MODEL_DIR is touched; config.gin is written once the state
    # is restored (run_dir.write_config, below), and only by a run that will train.
    # The quick checks first; reading examples to check their lengths comes last.
    checks.check_train_settings(
        mixture_or_task_name, task_feature_lengths, train_steps, batch_size, train_split,
        eval_period=eval_period, log_every=log_every, checkpoint_period=checkpoint_period,
        eval_batch_size=eval_batch_size, random_seed=random_seed, check_lengths=False,
        input_threads=input_threads,
    )  # fmt: skip
    model_dir = checks.check_model_dir(model_dir)
    if initial_checkpoint_path and not os.path.exists(initial_checkpoint_path):
        raise UserError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path}: no such checkpoint")
    mesh = mesh or partitioning.make_mesh()
    rules = axis_rules or partitioning.logical_axis_rules()
    if batch_size % mesh.shape["data"]:
        raise UserError(
            f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis ({mesh.shape['data']})"
        )
    log.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
    is_main = jax.process_index() == 0
    cache = programs if programs is not None else {}
    plan = plan_lib.plan_step(
        mixture_or_task_name, task_feature_lengths, train_steps, batch_size, model_config,
        loss_weighting, z_loss, optimizer, learning_rate_fn, cache,
    )  # fmt: skip
    if check_lengths:
        checks.check_lengths(mixture_or_task_name, task_feature_lengths, train_split)

    # ---------------------------------------------------------------- checkpoints: where do we start?
    ckpt = checkpoints.Checkpointer(
        model_dir, keep_checkpoints, checkpoint_period, checkpoint_every_secs
    )
    start_step = ckpt.latest_step() or 0
    checks.check_progress(model_dir, start_step, train_steps)

    # ---------------------------------------------------------------- data
    ds, task_names, _ = input_pipeline.build_dataset(
        mixture_or_task_name,
        task_feature_lengths,
        batch_size,
        weighting=loss_weighting,
        split=train_split,
        seed=random_seed,
        use_cached=use_cached_tasks,
        pack=pack,
    )

    # ---------------------------------------------------------------- programs
    # The jitted programs depend on the plan and the mesh, not on the seed or the data: runs
    # alike (a sweep's) share them through `programs`, traced and compiled once.
    built = plan_lib.build_step(plan, mesh, rules, cache)
    model = built.model  # the network the step runs (KERNELS settled for the mesh)

    # ---------------------------------------------------------------- state
    with mesh, nn.logical_axis_rules(rules):
        restored = None
        if start_step:
            restored = checkpoints.restore_newest_readable(
                ckpt, built.abstract_params, built.abstract_opt, say=checks.say_for(is_main)
            )
        if restored is not None:
            start_step, params, opt_state, meta = restored
            checks.say_for(is_main)(
                f"resumed from {model_dir}/checkpoint_{start_step} "
                f"(data position {meta.get('data_position')})"
            )
        else:
            start_step = 0
            if initial_checkpoint_path:
                params = checkpoints.load_params(initial_checkpoint_path, built.abstract_params)
            else:
                params = built.init(jax.random.PRNGKey(random_seed))
            opt_state = built.opt_init(params)
    threads = input_pipeline.input_threads(input_threads)
    batches = input_pipeline.numpy_batches(ds, start_step=start_step, threads=threads)
    if is_main:
        run_dir.write_config(model_dir, gin.config_str(), start_step, train_steps)
        run_dir.truncate_metrics(model_dir, start_step)
    state = hooks_lib.RunState(
        model_dir=model_dir,
        model=model,
        mesh=mesh,
        rules=rules,
        train_steps=train_steps,
        batch_size=batch_size,
        task_names=task_names,
        step=start_step,
        params=params,
        opt_state=opt_state,
        is_main=is_main,
    )

    # ---------------------------------------------------------------- hooks
    def writer(name: str):
        return metric_writers.create_default_writer(
            os.path.join(model_dir, name), just_logging=not is_main, asynchronous=True
        )

    eval_writer = writer("eval")
    evaluators: dict[str, evaluation.Evaluator] = {}

    def evaluate(split: str, step: int) -> dict[str, float]:
        if split not in evaluators:
            evaluators[split] = evaluation.Evaluator(
                mixture_or_task_name,
                split,
                task_feature_lengths,
                model_dir if is_main else None,
                eval_examples if split == eval_split else None,
                use_cached_tasks,
            )
        if not evaluators[split]:
            return {}
        result = (
            evaluators[split]
            .evaluate(
                model,
                lambda: state.params,
                mesh,
                rules,
                eval_batch_size,
                step,
                cache,
                say=functools.partial(print, flush=True) if is_main else None,
            )
            .metrics
        )
        result = {f"{split}/{k}": v for k, v in result.items()}
        eval_writer.write_scalars(step, result)
        if is_main:
            print(
                f"step {step} " + "  ".join(f"{k} {v:.2f}" for k, v in sorted(result.items())),
                flush=True,
            )
        return result

    os.makedirs(os.path.join(model_dir, "train"), exist_ok=True)
    metrics_path = os.path.join(model_dir, run_dir.METRICS_FILE) if is_main else None
    log_metrics = hooks_lib.LogMetrics(writer("train"), log_every, metrics_path)
    state.hooks = [
        *([hooks_lib.Evaluate(eval_split, eval_period, evaluate)] if eval_period else []),
        *hooks,
        log_metrics,
        hooks_lib.SaveCheckpoints(ckpt, log_every, random_seed),
        *([hooks_lib.Evaluate(test_split, 0, evaluate, at_end_only=True)] if test_split else []),
    ]

    # ---------------------------------------------------------------- the train loop
    batch_sharding = partitioning.data_sharding(mesh)
    dropout_key = jax.random.PRNGKey(random_seed + 1)
    finished = False
    try:
        with mesh, nn.logical_axis_rules(rules):
            while not state.final:
                try:
                    host_batch = next(batches)
                except StopIteration:
                    raise UserError(
                        f"{mixture_or_task_name}: the training data ran out at step {state.step}"
                    ) from None
                batch = {
                    k: jax.make_array_from_process_local_data(batch_sharding, host_batch[k])
                    for k in step_lib.BATCH_KEYS
                    if k in host_batch
                }
                state.params, state.opt_state, state.aux = built.step(
                    state.params, state.opt_state, jnp.asarray(state.step, jnp.int32), batch,
                    dropout_key,
                )  # fmt: skip
                state.step += 1
                state.target_tokens = (
                    float((host_batch["decoder_target_tokens"] > 0).sum()) * jax.process_count()
                )
                for hook in state.hooks:
                    if hook.due(state):
                        hook.on_step(state)
            if state.stop_reason and is_main:
                print(f"stopped at step {state.step}: {state.stop_reason}", flush=True)
            for hook in state.hooks:
                hook.on_end(state)
            finished = True
    finally:
        if not finished:  # whatever stopped the run, a save in flight completes or is absent;
            # the error that stopped it is the one to report
            with contextlib.suppress(Exception):
                ckpt.close()
    eval_writer.flush()
    return TrainResult(
        state.step,
        state.train_metrics,
        state.eval_metrics,
        state.test_metrics,
        model_dir,
        log_metrics.step_seconds(),
    )
