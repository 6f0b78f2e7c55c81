"""`dsbs compile`: the train step `dsbs train` would run with the same gin, compiled for a TPU
slice on this host (no TPU needed; libtpu is the `tpu` extra), with its per-device memory,
FLOPs and collectives. Exits 2 with one line when it would not fit the slice's HBM."""

from __future__ import annotations

import json
import os

from dsbs_jax.commands import _gin_command
from dsbs_jax.errors import UserError

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    parser.add_argument(
        "--topology",
        default=None,
        help="TPU slice, e.g. v5e:4x4 or v5p:4x4x4 (default: TOPOLOGY of the mesh gin)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def run(args) -> int:
    # A host without a TPU: JAX's default backend stays the CPU (libtpu would otherwise look for
    # a TPU at start-up and warn); the slice's devices come from libtpu's topology description.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from dsbs_jax.commands import _gin_command

    data = _gin_command.setup(args, check_required=False)  # MODEL_DIR and the like: not needed
    from dsbs_jax.train import aot, partitioning

    topology = args.topology or partitioning.tpu_topology()
    if not topology:
        raise UserError(
            "no --topology given and the gin files name none (the TPU mesh gins in meshes/ set "
            "TOPOLOGY); e.g. --topology v5e:4x4"
        )
    mesh = aot.slice_mesh(topology)
    rules = partitioning.logical_axis_rules()
    plan = aot.plan_from_gin(data.get("data_dir"))
    try:
        report = aot.compile_plan(plan, mesh, rules, topology)
    except aot.DoesNotFit as e:
        raise UserError(_refused(e, plan, mesh, _rules_kind(rules))) from None
    config = plan.model_config
    if args.json:
        print(json.dumps({**report.as_dict(), "rules": _rules_kind(rules)}, sort_keys=True))
    else:
        print(_text(report, config, _rules_kind(rules)))
    if not report.fits:
        raise UserError(_advice(report, _rules_kind(rules)))
    return 0


def _rules_kind(rules) -> str:
    from dsbs_jax.train import partitioning

    if tuple(rules) == partitioning.FSDP_RULES:
        return "fsdp"
    return "standard" if tuple(rules) == partitioning.STANDARD_RULES else "custom"


def _gib(n: float) -> str:
    """Bytes in GiB (MiB below one GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _text(r, config, rules_kind: str) -> str:
    per_data = r.batch_size // r.mesh["data"]
    hbm = (
        f" of {_gib(r.hbm_bytes)} ({100 * r.total_bytes / r.hbm_bytes:.0f}%)" if r.hbm_bytes else ""
    )
    collectives = ", ".join(
        f"{kind} {c['count']} ({_gib(c['bytes'])})" for kind, c in r.collectives.items()
    )
    layers = f"{config.num_encoder_layers}+{config.num_decoder_layers}"
    return "\n".join([
        f"model: d_model {config.emb_dim}, {layers} layers, mlp {config.mlp_dim}, vocab "
        f"{config.vocab_size}; activations {config.dtype}, attention logits {r.attention_logits}, "
        f"remat {r.remat_policy}, kernels {r.kernels}",
        f"slice: {r.topology}, {r.devices} x {r.device_kind}; mesh data {r.mesh['data']} x model "
        f"{r.mesh['model']}, {rules_kind} rules; batch {r.batch_size} ({per_data} per data "
        f"shard) of {r.lengths[0]}/{r.lengths[1]} tokens",
        "per device HBM:",
        f"  parameters + optimizer state  {_gib(r.state_bytes)}",
        f"  arguments (with the batch)    {_gib(r.argument_bytes)}",
        f"  activations / temp            {_gib(r.temp_bytes)}",
        f"  total                         {_gib(r.total_bytes)}{hbm}: "
        + ("fits" if r.fits else "does not fit"),
        f"FLOPs per step: {r.flops * r.devices:.3g} ({r.flops:.3g} per device, XLA's count)",
        f"collectives: {collectives}",
        f"compile time: {r.compile_seconds:.0f} s",
    ])  # fmt: skip


def _tips(temp, room, per_data, data, model, remat, rules_kind) -> str:
    """What would bring a step under a device's HBM: batch, remat, fsdp, model parallelism."""
    tips = []
    if temp and room > 0 and per_data > 1:
        fit = int(per_data * room / temp)
        if 1 <= fit < per_data:
            tips.append(f"a per-device batch of about {fit} (BATCH_SIZE {fit * data})")
    if remat in ("none", "dots"):
        tips.append("--gin.REMAT_POLICY=\"'dots_no_batch'\" or \"'full'\"")
    elif remat == "dots_no_batch":
        tips.append("--gin.REMAT_POLICY=\"'full'\"")
    if rules_kind != "fsdp" and data > 1:
        tips.append("meshes/fsdp.gin (parameters and optimizer state sharded over 'data')")
    if model == 1 and data > 1:
        tips.append("--gin.NUM_PARTITIONS=4")
    return ", or ".join(tips or ["a larger slice"])


def _advice(r, rules_kind: str) -> str:
    """One line: how far over the chip's HBM the step is, and what would bring it under."""
    over = r.total_bytes - r.hbm_bytes
    per_data = r.batch_size // r.mesh["data"]
    room = r.hbm_bytes - (r.total_bytes - r.temp_bytes)
    tips = _tips(r.temp_bytes, room, per_data, r.mesh["data"], r.mesh["model"], r.remat_policy,
                 rules_kind)  # fmt: skip
    return (
        f"the step needs {_gib(r.total_bytes)} per device, {_gib(over)} "
        f"({100 * over / r.hbm_bytes:.0f}%) more than the {_gib(r.hbm_bytes)} of a "
        f"{r.device_kind} device; try {tips}"
    )


def _refused(e, plan, mesh, rules_kind: str) -> str:
    """One line for a step the TPU compiler refused as too large (it gives only the temporaries)."""
    config, batch_size = plan.model_config, plan.batch_size
    data, model = mesh.shape["data"], mesh.shape["model"]
    kind = mesh.devices.flat[0].device_kind
    if e.temp_bytes is None:
        return f"the step does not fit a {kind} device ({e}); try " + _tips(
            None, 0, batch_size // data, data, model, config.remat_policy, rules_kind
        )
    over = e.temp_bytes - e.available_bytes
    tips = _tips(e.temp_bytes, e.available_bytes, batch_size // data, data, model,
                 config.remat_policy, rules_kind)  # fmt: skip
    return (
        f"the step needs {_gib(e.temp_bytes)} of temporaries per device, {_gib(over)} "
        f"({e.temp_bytes / e.available_bytes:.1f}x) more than the {_gib(e.available_bytes)} a "
        f"{kind} device has; try {tips}"
    )
