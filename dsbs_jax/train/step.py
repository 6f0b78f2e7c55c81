"""The train step: parameter and optimizer layouts on a mesh and the jitted update.

`dsbs train` runs it, and `dsbs compile` compiles the same program for a TPU slice ahead of time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from dsbs_jax import weighting
from dsbs_jax.model import t5
from dsbs_jax.model.attention_layout import joined_shape, joined_spec
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

    model: Any  # the network the step runs, its `kernels` settled for the mesh's platform
    param_shardings: Any
    abstract_params: Any
    opt_shardings: Any
    abstract_opt: Any
    init: Any  # rng -> params
    opt_init: Any  # params -> opt_state
    step: Any  # (params, opt_state, step, batch, dropout_key) -> (params, opt_state, aux)


# Attention kernels are 3-D here and 2-D in T5X (`model.attention_layout`). Adafactor factors a
# parameter's second moment over its two largest dimensions, and only when both have 128 or more
# entries: for [768, 12, 64] that is not the case, so it would keep a full second moment (as large
# as the kernel) where T5X keeps a row and a column. The optimizer sees these kernels as the
# [embed, heads * kv] and [heads * kv, embed] matrices T5X has.
def _matrix_shape(path, shape: tuple[int, ...]) -> tuple[int, ...]:
    names = [getattr(k, "key", None) for k in path]
    if len(names) < 2 or names[-1] != "kernel":
        return shape
    return joined_shape(names[-2], shape)


def _as_matrix(path, x):
    shape = _matrix_shape(path, x.shape)
    return x if shape == x.shape else x.reshape(shape)


def attention_as_matrices(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` acting on attention kernels reshaped to T5X's 2-D layout (same values, T5X's
    factored Adafactor state); the updates come back in the parameters' shapes."""

    def view(tree):
        return None if tree is None else jax.tree_util.tree_map_with_path(_as_matrix, tree)

    def init(params):
        return tx.init(view(params))

    def update(updates, state, params=None):
        new, state = tx.update(view(updates), state, view(params))
        return jax.tree.map(lambda u, ref: u.reshape(ref.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def _names(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _view_spec(path, spec: tuple, ndim: int) -> tuple:
    """The partition spec of a parameter as `attention_as_matrices` shows it to the optimizer."""
    spec = tuple(spec) + (None,) * (ndim - len(spec))
    names = _names(path)
    if ndim == 3 and len(names) >= 2 and names[-1] == "kernel":
        return joined_spec(names[-2], spec)
    return spec


def optimizer_shardings(tx, abstract_params, param_shardings, mesh):
    """Shardings of `tx`'s state: a leaf shaped like a parameter (Adam's moments, Adafactor's
    unfactored second moments) lies as that parameter does; everything else (factored rows and
    columns, counts) is small and replicated. Left to XLA, state that `init` fills with zeros
    can come out laid differently from the parameters, and every step then gathers it."""
    from jax.sharding import NamedSharding, PartitionSpec

    specs = {_names(p): (p, x) for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
    flat_shardings = {
        _names(path): s for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)
    }
    view = {}
    for names, (path, x) in specs.items():
        spec = _view_spec(path, flat_shardings[names].spec, x.ndim)
        view[names] = (_matrix_shape(path, x.shape), PartitionSpec(*spec))
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(path, leaf):
        names = _names(path)
        for start in range(len(names)):
            hit = view.get(names[start:])
            if hit is not None:
                shape, spec = hit
                return NamedSharding(mesh, spec) if leaf.shape == shape else replicated
        return replicated

    state = jax.eval_shape(tx.init, abstract_params)
    return jax.tree_util.tree_map_with_path(place, state)


def mesh_platform(mesh) -> str:
    return mesh.devices.flat[0].platform


def build_programs(
    model, tx, schedule, num_tasks, loss_weighting, z_loss, mesh, rules, enc_len, dec_len
) -> Programs:
    """The parameter and optimizer layouts, and the jitted init, optimizer-init and update-step
    functions (the step is traced on its first call).

    The one place a run settles the model's `kernels` 'auto': by the mesh's platform (the mesh may
    be a TPU slice compiled for on a CPU host), so the step runs the CPU kernels only on CPU
    devices; `Programs.model` is that network, for whatever else the run computes (its eval)."""
    config = t5.resolve_kernels(model.config, mesh_platform(mesh))
    model = model.clone(config=config)
    plain = config.kernels == "plain"
    tx = attention_as_matrices(tx)
    init_params, param_shardings, abstract_params = partitioning.param_layout(
        model, (enc_len, dec_len), mesh, rules
    )
    opt_shardings = optimizer_shardings(tx, abstract_params, param_shardings, mesh)
    abstract_opt = checkpoints.abstract_with_shardings(
        jax.eval_shape(tx.init, abstract_params), opt_shardings
    )

    def train_step(params, opt_state, step, batch, dropout_key):
        rng = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            # The model's logical sharding constraints act only under an abstract mesh (flax
            # reads `jax.sharding.get_abstract_mesh()`; `with mesh:` alone leaves them no-ops).
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                logits = model.apply(
                    {"params": p}, **_model_inputs(batch), enable_dropout=True,
                    rngs={"dropout": rng},
                )  # fmt: skip
            tok = losses.token_losses(logits, batch["decoder_target_tokens"], z_loss, plain)
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
        model=model,
        param_shardings=param_shardings,
        abstract_params=abstract_params,
        opt_shardings=opt_shardings,
        abstract_opt=abstract_opt,
        init=jax.jit(init_params, out_shardings=param_shardings),
        opt_init=jax.jit(tx.init, out_shardings=opt_shardings),
        step=step,
    )
