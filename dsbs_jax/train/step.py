"""The train step: parameter and optimizer layouts on a mesh and the jitted update.

`dsbs train` runs it, and `dsbs compile` compiles the same program for a TPU slice ahead of time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from dsbs_jax import weighting
from dsbs_jax.train import checkpoints, losses, partitioning

BATCH_KEYS = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_task_ids",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


# Positions are not passed to the network: within a packed segment, relative positions are the
# same whether counted from the row or from the segment start, and attention across segments is
# masked, so the logits are identical; without them the relative-position bias is computed once
# per stack as [1, heads, q, k] instead of [batch, heads, q, k].
_NOT_MODEL_INPUTS = (
    "decoder_loss_weights",
    "decoder_task_ids",
    "encoder_positions",
    "decoder_positions",
)


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: batch[k] for k in BATCH_KEYS if k in batch and k not in _NOT_MODEL_INPUTS}


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted programs of a run and the shardings they were built for."""

    param_shardings: Any
    abstract_params: Any
    opt_shardings: Any
    abstract_opt: Any
    init: Any  # rng -> params
    opt_init: Any  # params -> opt_state
    step: Any  # (params, opt_state, step, batch, dropout_key) -> (params, opt_state, aux)


def build_programs(
    model, tx, schedule, num_tasks, loss_weighting, z_loss, mesh, rules, enc_len, dec_len
) -> Programs:
    """The parameter and optimizer layouts, and the jitted init, optimizer-init and update-step
    functions (the step is traced on its first call)."""
    init_params, param_shardings, abstract_params = partitioning.param_layout(
        model, (enc_len, dec_len), mesh, rules
    )
    opt_shardings = jax.jit(tx.init).lower(abstract_params).compile().output_shardings
    opt_shardings = partitioning.on_mesh(opt_shardings, mesh)
    abstract_opt = checkpoints.abstract_with_shardings(
        jax.eval_shape(tx.init, abstract_params), opt_shardings
    )

    def train_step(params, opt_state, step, batch, dropout_key):
        rng = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            logits = model.apply(
                {"params": p}, **_model_inputs(batch), enable_dropout=True, rngs={"dropout": rng}
            )
            tok = losses.token_losses(logits, batch["decoder_target_tokens"], z_loss)
            return weighting.weighted_loss(
                tok,
                batch["decoder_loss_weights"],
                batch["decoder_task_ids"],
                num_tasks,
                loss_weighting,
            )

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        aux["loss"] = loss
        aux["grad_norm"] = optax.tree.norm(grads)
        if schedule is not None:
            aux["learning_rate"] = schedule(step)
        return params, opt_state, aux

    batch_sharding = partitioning.data_sharding(mesh)
    step = jax.jit(
        train_step,
        in_shardings=(param_shardings, opt_shardings, None, batch_sharding, None),
        out_shardings=(param_shardings, opt_shardings, None),
        donate_argnums=(0, 1),
    )
    return Programs(
        param_shardings=param_shardings,
        abstract_params=abstract_params,
        opt_shardings=opt_shardings,
        abstract_opt=abstract_opt,
        init=jax.jit(init_params, out_shardings=param_shardings),
        opt_init=jax.jit(tx.init, out_shardings=opt_shardings),
        step=step,
    )
