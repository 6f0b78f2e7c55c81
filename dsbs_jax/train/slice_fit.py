"""Whether the train step fits a TPU slice, in words: what `dsbs compile` prints and advises.

`compile_for_slice` compiles the step `dsbs train` would run under the current gin config for a
slice (`aot.plan_from_gin`, `aot.slice_mesh`, `aot.compile_plan`); the `SliceFit` it returns
gives the figures as text or JSON and, for a step over a device's HBM, one line saying by how
much and what would bring it under (a smaller batch, remat, fsdp, model parallelism).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dsbs_jax.errors import UserError
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import aot, partitioning


def rules_kind(rules: Any) -> str:
    """'fsdp', 'standard' or 'custom': which of the partitioning's rule sets `rules` is."""
    if tuple(rules) == partitioning.FSDP_RULES:
        return "fsdp"
    return "standard" if tuple(rules) == partitioning.STANDARD_RULES else "custom"


def gib(n: float) -> str:
    """Bytes in GiB (MiB below one GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def tips(
    temp: float | None, room: float, per_data: int, data: int, model: int, remat: str,
    rules: str,
) -> str:  # fmt: skip
    """What would bring a step under a device's HBM: batch, remat, fsdp, model parallelism.

    `temp`: the step's temporaries per device (None: unknown); `room`: what a device has left
    for them; `per_data`: the batch per data shard; `data`, `model`: the mesh's axes."""
    found = []
    if temp and room > 0 and per_data > 1:
        fit = int(per_data * room / temp)
        if 1 <= fit < per_data:
            found.append(f"a per-device batch of about {fit} (BATCH_SIZE {fit * data})")
    if remat in ("none", "dots"):
        found.append("--gin.REMAT_POLICY=\"'dots_no_batch'\" or \"'full'\"")
    elif remat == "dots_no_batch":
        found.append("--gin.REMAT_POLICY=\"'full'\"")
    if rules != "fsdp" and data > 1:
        found.append("meshes/fsdp.gin (parameters and optimizer state sharded over 'data')")
    if model == 1 and data > 1:
        found.append("--gin.NUM_PARTITIONS=4")
    return ", or ".join(found or ["a larger slice"])


def advice(r: aot.CompileReport, rules: str) -> str:
    """One line: how far over the chip's HBM the step is, and what would bring it under."""
    over = r.total_bytes - r.hbm_bytes
    per_data = r.batch_size // r.mesh["data"]
    room = r.hbm_bytes - (r.total_bytes - r.temp_bytes)
    found = tips(r.temp_bytes, room, per_data, r.mesh["data"], r.mesh["model"], r.remat_policy,
                 rules)  # fmt: skip
    return (
        f"the step needs {gib(r.total_bytes)} per device, {gib(over)} "
        f"({100 * over / r.hbm_bytes:.0f}%) more than the {gib(r.hbm_bytes)} of a "
        f"{r.device_kind} device; try {found}"
    )


def refused(
    e: aot.DoesNotFit, config: T5Config, batch_size: int, mesh_shape: dict[str, int],
    device_kind: str, rules: str,
) -> str:  # fmt: skip
    """One line for a step the TPU compiler refused as too large (it gives only the temporaries)."""
    data, model = mesh_shape["data"], mesh_shape["model"]
    if e.temp_bytes is None:
        return f"the step does not fit a {device_kind} device ({e}); try " + tips(
            None, 0, batch_size // data, data, model, config.remat_policy, rules
        )
    over = e.temp_bytes - e.available_bytes
    found = tips(e.temp_bytes, e.available_bytes, batch_size // data, data, model,
                 config.remat_policy, rules)  # fmt: skip
    return (
        f"the step needs {gib(e.temp_bytes)} of temporaries per device, {gib(over)} "
        f"({e.temp_bytes / e.available_bytes:.1f}x) more than the {gib(e.available_bytes)} a "
        f"{device_kind} device has; try {found}"
    )


@dataclasses.dataclass(frozen=True)
class SliceFit:
    """A train step compiled for a TPU slice: its figures, its model and its rule set."""

    report: aot.CompileReport
    model_config: T5Config
    rules: str  # rules_kind of the partitioning rules

    def as_dict(self) -> dict[str, Any]:
        """The figures as one JSON-ready dict (`dsbs compile --json`)."""
        return {**self.report.as_dict(), "rules": self.rules}

    def advice(self) -> str | None:
        """None when the step fits a device's HBM, else the one line of `advice`."""
        return None if self.report.fits else advice(self.report, self.rules)

    def text(self) -> str:
        """The figures as `dsbs compile` prints them."""
        r, config = self.report, self.model_config
        per_data = r.batch_size // r.mesh["data"]
        hbm = (
            f" of {gib(r.hbm_bytes)} ({100 * r.total_bytes / r.hbm_bytes:.0f}%)"
            if r.hbm_bytes
            else ""
        )
        collectives = ", ".join(
            f"{kind} {c['count']} ({gib(c['bytes'])})" for kind, c in r.collectives.items()
        )
        layers = f"{config.num_encoder_layers}+{config.num_decoder_layers}"
        return "\n".join([
            f"model: d_model {config.emb_dim}, {layers} layers, mlp {config.mlp_dim}, vocab "
            f"{config.vocab_size}; activations {config.dtype}, attention logits "
            f"{r.attention_logits}, remat {r.remat_policy}, kernels {r.kernels}",
            f"slice: {r.topology}, {r.devices} x {r.device_kind}; mesh data {r.mesh['data']} x "
            f"model {r.mesh['model']}, {self.rules} rules; batch {r.batch_size} ({per_data} per "
            f"data shard) of {r.lengths[0]}/{r.lengths[1]} tokens",
            "per device HBM:",
            f"  parameters + optimizer state  {gib(r.state_bytes)}",
            f"  arguments (with the batch)    {gib(r.argument_bytes)}",
            f"  activations / temp            {gib(r.temp_bytes)}",
            f"  total                         {gib(r.total_bytes)}{hbm}: "
            + ("fits" if r.fits else "does not fit"),
            f"FLOPs per step: {r.flops * r.devices:.3g} ({r.flops:.3g} per device, XLA's count)",
            f"collectives: {collectives}",
            f"compile time: {r.compile_seconds:.0f} s",
        ])  # fmt: skip


def compile_for_slice(topology: str | None = None, data_dir: str | None = None) -> SliceFit:
    """The step `dsbs train` would run under the current gin config, compiled for a TPU slice
    (`topology`, e.g. v5e:4x4; None: the TOPOLOGY the mesh gin binds). A step the compiler
    refuses as too large is a UserError of one line with advice; one that compiles but is over
    a device's HBM comes back with `advice()` set."""
    topology = topology or partitioning.tpu_topology()
    if not topology:
        raise UserError(
            "no --topology given and the gin files name none (the TPU mesh gins in meshes/ set "
            "TOPOLOGY); e.g. --topology v5e:4x4"
        )
    mesh = aot.slice_mesh(topology)
    rules = partitioning.logical_axis_rules()
    plan = aot.plan_from_gin(data_dir)
    try:
        report = aot.compile_plan(plan, mesh, rules, topology)
    except aot.DoesNotFit as e:
        kind = mesh.devices.flat[0].device_kind
        message = refused(e, plan.model_config, plan.batch_size, dict(mesh.shape), kind,
                          rules_kind(rules))  # fmt: skip
        raise UserError(message) from None
    return SliceFit(report, plan.model_config, rules_kind(rules))
