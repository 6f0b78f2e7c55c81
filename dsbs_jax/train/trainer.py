"""The native trainer: one linear `train()` you can read top to bottom.

Sections: set-up and config, mesh, input pipeline, model and optimizer, shardings and state,
checkpoint restore, the update step, evaluation, the train loop. Configured by gin with T5X's
macros (see gin_configs/runs/*.gin); `dsbs train` calls it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
import seqio
from clu import metric_writers

from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.errors import UserError
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import (
    checkpoints,
    evaluation,
    input_pipeline,
    losses,
    multihost,
    optimizers,
    partitioning,
    run_dir,
)
from dsbs_jax.train import step as step_lib

log = logging.getLogger("dsbs.train")


@dataclasses.dataclass
class TrainResult:
    """What a run ended with: its last step, last metrics and the final evaluation."""

    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    test_metrics: dict[str, float]
    model_dir: str


def model_config_for(config: T5Config, mixture_or_task_name: str) -> T5Config:
    """Fills vocab_size from the task's vocabulary (rounded up to 128) when the config leaves it 0."""
    if getattr(config, "vocab_size", 0):
        return config
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    size = provider.output_features["targets"].vocabulary.vocab_size
    return dataclasses.replace(config, vocab_size=int(math.ceil(size / 128) * 128))


class _Progress:
    """A tqdm bar on a terminal; a log line every `every` steps otherwise."""

    def __init__(self, start: int, total: int, every: int):
        self.every, self.total, self.bar = every, total, None
        self.t0, self.s0 = time.time(), start
        if sys.stderr.isatty() and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float] | None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        elif metrics is not None and jax.process_index() == 0:
            done = step - self.s0
            rate = done / max(time.time() - self.t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(
                f"step {step}/{self.total}  loss {metrics['loss']:.4f}  "
                f"{rate:.2f} steps/s  eta {eta:.0f}s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    vocabulary_path: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis_rules: partitioning.LogicalRules | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate_fn: optax.Schedule | None = None,
    programs: dict | None = None,
) -> TrainResult:
    """Trains the student and returns its final metrics. Resumes from MODEL_DIR when it has checkpoints.

    train_split may slice the training data the TFDS way (`train[:25%]`, `train[:500]`) for
    data-fraction sweeps; eval_split and test_split are scored with the tasks' metrics (against
    gold labels) every eval_period steps and at the end.
    """
    # ---------------------------------------------------------------- set-up and config
    if loss_weighting not in losses.WEIGHTINGS:
        raise UserError(
            f"LOSS_WEIGHTING must be one of {losses.WEIGHTINGS}, got {loss_weighting!r}"
        )
    # Everything is checked before MODEL_DIR is touched; config.gin is written once the state
    # is restored (run_dir.write_config, below), and only by a run that will train.
    run_dir.check_train_settings(
        mixture_or_task_name, task_feature_lengths, train_steps, batch_size, train_split,
        eval_period=eval_period, log_every=log_every, checkpoint_period=checkpoint_period,
        eval_batch_size=eval_batch_size, random_seed=random_seed,
    )  # fmt: skip
    if vocabulary_path:
        vocab_lib.set_vocabulary_override(vocabulary_path)
    model_dir = run_dir.check_model_dir(model_dir)
    is_main = jax.process_index() == 0
    config = model_config_for(model_config, mixture_or_task_name)
    model = Transformer(config)

    # ---------------------------------------------------------------- mesh
    mesh = mesh or partitioning.make_mesh()
    rules = axis_rules or partitioning.logical_axis_rules()
    if batch_size % mesh.shape["data"]:
        raise UserError(
            f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis ({mesh.shape['data']})"
        )
    log.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

    # ---------------------------------------------------------------- checkpoints: where do we start?
    ckpt = checkpoints.Checkpointer(
        model_dir, keep_checkpoints, checkpoint_period, checkpoint_every_secs
    )
    start_step = ckpt.latest_step() or 0
    run_dir.check_progress(model_dir, start_step, train_steps)

    # ---------------------------------------------------------------- input pipeline
    ds, task_names, task_weights = input_pipeline.build_dataset(
        mixture_or_task_name,
        task_feature_lengths,
        batch_size,
        weighting=loss_weighting,
        split=train_split,
        seed=random_seed,
        use_cached=use_cached_tasks,
        pack=pack,
    )
    num_tasks = len(task_names)

    # ---------------------------------------------------------------- model and optimizer
    # An optimizer passed in (Python callers) logs the learning rate only with its schedule.
    schedule = learning_rate_fn
    if optimizer is None:
        schedule = optimizers.learning_rate_schedule(total_steps=train_steps)
    tx = optimizer or optimizers.make_optimizer(schedule)
    enc_len, dec_len = task_feature_lengths["inputs"], task_feature_lengths["targets"]

    # ---------------------------------------------------------------- shardings and programs
    # The jitted programs depend on the model, optimizer, mesh and shapes, not on the seed or the
    # data: a caller that trains many runs alike (a sweep) passes `programs` to trace them once.
    key = (config, tx, schedule, num_tasks, loss_weighting, z_loss, mesh, rules, enc_len, dec_len)
    built = programs.get(key) if programs is not None else None
    if built is None:
        with mesh, nn.logical_axis_rules(rules):
            built = step_lib.build_programs(
                model, tx, schedule, num_tasks, loss_weighting, z_loss, mesh, rules, enc_len,
                dec_len,
            )  # fmt: skip
        if programs is not None:
            programs[key] = built

    # ---------------------------------------------------------------- state
    with mesh, nn.logical_axis_rules(rules):
        restored = None
        if start_step:
            restored = checkpoints.restore_newest_readable(
                ckpt, built.abstract_params, built.abstract_opt, say=run_dir.say_for(is_main)
            )
        if restored is not None:
            start_step, params, opt_state, meta = restored
            run_dir.say_for(is_main)(
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
    batches = input_pipeline.numpy_batches(ds, start_step=start_step)
    if is_main:
        run_dir.write_config(model_dir, gin.config_str(), start_step, train_steps)
        run_dir.truncate_metrics(model_dir, start_step)
    batch_sharding = partitioning.data_sharding(mesh)
    dropout_key = jax.random.PRNGKey(random_seed + 1)

    # ---------------------------------------------------------------- evaluation
    writer = metric_writers.create_default_writer(
        os.path.join(model_dir, "train"), just_logging=not is_main, asynchronous=True
    )
    eval_writer = metric_writers.create_default_writer(
        os.path.join(model_dir, "eval"), just_logging=not is_main, asynchronous=True
    )
    os.makedirs(os.path.join(model_dir, "train"), exist_ok=True)
    metrics_log = open(os.path.join(model_dir, "train", "metrics.jsonl"), "a") if is_main else None
    decode_fn = evaluation.make_decode_fn(model, dec_len)
    eval_batch = max(eval_batch_size // mesh.shape["data"], 1) * mesh.shape["data"]
    current = {"params": params}
    predict_fn = evaluation.make_predict_fn(decode_fn, lambda: current["params"], eval_batch)
    evaluators: dict[str, Any] = {}

    def evaluate(split: str, step: int, num_examples: int | None) -> dict[str, float]:
        if split not in evaluators:
            evaluators[split] = evaluation.make_evaluator(
                mixture_or_task_name,
                split,
                task_feature_lengths,
                model_dir if is_main else None,
                num_examples,
                use_cached_tasks,
            )
        if evaluators[split] is None:
            return {}
        with mesh, nn.logical_axis_rules(rules):
            result = evaluation.run_evaluation(evaluators[split], predict_fn, step)
        result = {f"{split}/{k}": v for k, v in result.items()}
        eval_writer.write_scalars(step, result)
        if is_main:
            print(
                f"step {step} " + "  ".join(f"{k} {v:.2f}" for k, v in sorted(result.items())),
                flush=True,
            )
        return result

    # ---------------------------------------------------------------- the train loop
    progress = _Progress(start_step, train_steps, log_every)
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    tokens_per_step = 0.0
    t_last, steps_since = time.time(), 0
    step = start_step
    with mesh, nn.logical_axis_rules(rules):
        while step < train_steps:
            try:
                host_batch = next(batches)
            except StopIteration:
                raise UserError(
                    f"{mixture_or_task_name}: the training data ran out at step {step}"
                ) from None
            batch = {
                k: jax.make_array_from_process_local_data(batch_sharding, host_batch[k])
                for k in step_lib.BATCH_KEYS
                if k in host_batch
            }
            params, opt_state, aux = built.step(
                params, opt_state, jnp.asarray(step, jnp.int32), batch, dropout_key
            )
            current["params"] = params
            step += 1
            steps_since += 1
            tokens_per_step = (
                float((host_batch["decoder_target_tokens"] > 0).sum()) * jax.process_count()
            )
            report = step % log_every == 0 or step == train_steps
            if report:
                aux = jax.device_get(aux)
                elapsed = max(time.time() - t_last, 1e-9)
                last_metrics = {"loss": float(aux["loss"]), "grad_norm": float(aux["grad_norm"])}
                if "learning_rate" in aux:
                    last_metrics["learning_rate"] = float(aux["learning_rate"])
                for t, name in enumerate(task_names, start=1):
                    last_metrics[f"loss/{name}"] = float(aux[f"task_{t}/loss"])
                last_metrics["steps_per_second"] = steps_since / elapsed
                last_metrics["seqs_per_second"] = steps_since * batch_size / elapsed
                last_metrics["target_tokens_per_second"] = steps_since * tokens_per_step / elapsed
                t_last, steps_since = time.time(), 0
                if not math.isfinite(last_metrics["loss"]):
                    raise UserError(
                        f"the loss became {last_metrics['loss']} at step {step}; lower the learning rate"
                    )
                writer.write_scalars(step, last_metrics)
                if metrics_log is not None:
                    metrics_log.write(json.dumps({"step": step, **last_metrics}) + "\n")
                    metrics_log.flush()
            progress.update(step, last_metrics if report else None)
            # Every process must agree (they all write it): see multihost.checkpoint_due.
            if multihost.checkpoint_due(ckpt, step, final=step == train_steps, sync_point=report):
                ckpt.save(
                    step,
                    params,
                    opt_state,
                    {"step": step, "data_position": step, "seed": random_seed},
                )
            if eval_period and (step % eval_period == 0 or step == train_steps):
                eval_metrics = evaluate(eval_split, step, eval_examples)
        progress.close()
        test_metrics = evaluate(test_split, step, None) if test_split else {}
    ckpt.close()
    writer.flush()
    eval_writer.flush()
    if metrics_log is not None:
        metrics_log.close()
    return TrainResult(step, last_metrics, eval_metrics, test_metrics, model_dir)
