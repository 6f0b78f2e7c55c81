"""Ahead-of-time compiles of the train step for a TPU slice, on any host (libtpu needed, no TPU).

`jax.experimental.topologies` describes a slice's devices without owning them; the train step
that `step.build_programs` builds is lowered on a mesh of those devices with abstract inputs and
compiled by libtpu. What comes back (per-device memory, FLOPs, collectives) is what `dsbs compile`
prints and what the tests check.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax import errors, weighting
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.errors import UserError
from dsbs_jax.train import checks, partitioning, trainer
from dsbs_jax.train import plan as plan_lib
from dsbs_jax.train import step as step_lib

GiB = 2**30

# HBM per chip, from the chips' spec sheets (device_kind as libtpu names it).
CHIP_HBM_BYTES = {
    "TPU v4": 32 * GiB,
    "TPU v5 lite": 16 * GiB,  # v5e
    "TPU v5": 95 * 10**9,  # v5p: 95 GB
    "TPU v6 lite": 32 * GiB,  # v6e (Trillium)
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def topology_devices(name: str) -> list[jax.Device]:
    """The devices of a TPU slice such as `v5e:4x4` or `v5p:4x4x4` (libtpu, no TPU needed)."""
    if not re.fullmatch(r"v[0-9a-z]+:\d+(x\d+)*", name or ""):
        raise UserError(f"--topology {name!r}: expected a TPU slice such as v5e:4x4 or v5p:4x4x4")
    # Another process may hold libtpu's lock file (a trainer, or a JAX process that probed the
    # TPU): compiling needs no TPU, so it does not need the lock either.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # v4 (like v5p) runs its two TensorCores as one megacore device, as TPU VMs do.
    chip_config = "megacore" if name.startswith("v4:") else "default"
    try:
        from jax.experimental import topologies

        with errors.native_stderr_hidden():  # libtpu's lines on a host that is not a TPU VM
            desc = topologies.get_topology_desc(
                topology_name=name, platform="tpu", chip_config_name=chip_config
            )
        return list(desc.devices)
    except Exception as e:  # libtpu missing or the name unknown: its message says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "initialize" in first.lower() or "plugin" in first.lower():
            raise UserError(
                f"compiling for TPU needs libtpu: pip install '.[tpu]' ({first})"
            ) from None
        raise UserError(f"--topology {name!r}: {first}") from None


def chip_count(name: str) -> int:
    return math.prod(int(n) for n in name.split(":", 1)[1].split("x"))


def device_hbm_bytes(name: str, devices: list[jax.Device]) -> int | None:
    """HBM per JAX device: the chip's HBM over the devices per chip (v4 shows 2 cores per chip)."""
    per_chip = CHIP_HBM_BYTES.get(devices[0].device_kind)
    if per_chip is None:
        return None
    return per_chip * chip_count(name) // len(devices)


_SHAPE = re.compile(
    r"\b(pred|s4|s8|s16|s32|s64|u4|u8|u16|u32|u64|f8e4m3fn|f8e5m2|bf16|f16|f32|f64|c64)\[([\d,]*)\]"
)
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
          "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8}  # fmt: skip


def _shape_bytes(text: str) -> list[int]:
    return [
        int(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d))
        for t, dims in _SHAPE.findall(text)
    ]


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Collective operations of a compiled HLO module by kind: how many, and the bytes they produce.

    One operation is one channel: the TPU compiler splits some collectives into pieces (a
    collective matmul's chain, async start/done pairs) that share their channel id, and these count
    once, with the size of their largest piece. A start's tuple holds operands then results; only
    the results are counted.
    """
    out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    op = re.compile(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    channel = re.compile(r"channel_id=(\d+)")
    seen: dict[tuple[str, str], int] = {}
    for n, line in enumerate(hlo_text.splitlines()):
        m = op.search(line)
        if not m:
            continue
        result, kind, start = m.group(1), m.group(2), m.group(3)
        sizes = _shape_bytes(result)
        if start and kind in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2 :]
        c = channel.search(line)
        key = (kind, c.group(1) if c else f"line{n}")
        seen[key] = max(seen.get(key, 0), sum(sizes))
    for (kind, _), size in seen.items():
        out[kind]["count"] += 1
        out[kind]["bytes"] += size
    return out


@dataclasses.dataclass
class CompileReport:
    """Per-device figures of a train step compiled for a TPU slice."""

    topology: str
    device_kind: str
    devices: int
    mesh: dict[str, int]
    state_bytes: int  # parameters + optimizer state on one device
    argument_bytes: int  # state + batch (XLA's argument size)
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    code_bytes: int
    hbm_bytes: int | None
    flops: float  # per device, XLA's cost analysis
    collectives: dict[str, dict[str, int]]
    compile_seconds: float
    attention_logits: str
    remat_policy: str
    kernels: str
    batch_size: int
    lengths: tuple[int, int]

    @property
    def total_bytes(self) -> int:
        """Peak per-device HBM XLA plans for: arguments, outputs not aliased to them, temp, code."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + (self.code_bytes)
        )

    @property
    def fits(self) -> bool:
        return self.hbm_bytes is None or self.total_bytes <= self.hbm_bytes

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(total_bytes=self.total_bytes, fits=self.fits, lengths=list(self.lengths))
        return d


class DoesNotFit(Exception):
    """The TPU compiler refused the step: its temporaries alone exceed a device's HBM."""

    def __init__(self, temp_bytes: float | None, available_bytes: float | None, message: str):
        super().__init__(message)
        self.temp_bytes, self.available_bytes = temp_bytes, available_bytes


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _does_not_fit(error: Exception) -> DoesNotFit | None:
    """libtpu's out-of-memory refusal as a DoesNotFit (None for any other compile error), e.g.
    "the total memory required for HLO temporaries (193.96G) exceeds available HBM (15.75G)"."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    first = next((line for line in text.splitlines() if "memory" in line), text)[:300]
    sizes = re.findall(r"\((\d+(?:\.\d+)?)([KMGT]?)i?B?\)", first)
    if len(sizes) >= 2:
        (a, ua), (b, ub) = sizes[:2]
        return DoesNotFit(float(a) * _UNITS[ua], float(b) * _UNITS[ub], first.strip())
    return DoesNotFit(None, None, first.strip())


def _per_device_bytes(abstract_tree) -> int:
    total = 0
    for x in jax.tree.leaves(abstract_tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
        total += int(np.prod(shape)) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_batch(batch_size: int, enc_len: int, dec_len: int, sharding) -> dict[str, Any]:
    """ShapeDtypeStructs of a packed train batch (what the input pipeline feeds the step)."""
    length = {k: dec_len for k in step_lib.BATCH_KEYS}
    length.update(encoder_input_tokens=enc_len, encoder_segment_ids=enc_len,
                  encoder_positions=enc_len)  # fmt: skip
    dtype = {k: jnp.int32 for k in step_lib.BATCH_KEYS}
    dtype["decoder_loss_weights"] = jnp.float32
    return {
        k: jax.ShapeDtypeStruct((batch_size, length[k]), dtype[k], sharding=sharding)
        for k in step_lib.BATCH_KEYS
    }


def compile_lowered(
    lowered, programs, mesh, batch_size: int, enc_len: int, dec_len: int, topology: str,
    model_config,
) -> CompileReport:  # fmt: skip
    """Compiles a lowered train step (of `programs`) for `topology`, with its figures."""
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # libtpu refuses a program that cannot fit, before any analysis
        refused = _does_not_fit(e)
        if refused is None:
            raise
        raise refused from None
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    devices = list(mesh.devices.flat)
    return CompileReport(
        topology=topology,
        device_kind=devices[0].device_kind,
        devices=len(devices),
        mesh=dict(mesh.shape),
        state_bytes=_per_device_bytes(programs.abstract_params)
        + _per_device_bytes(programs.abstract_opt),
        argument_bytes=int(mem.argument_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        hbm_bytes=device_hbm_bytes(topology, devices),
        flops=float((cost or {}).get("flops", float("nan"))),
        collectives=collectives(compiled.as_text()),
        compile_seconds=seconds,
        attention_logits="float32" if model_config.float32_attention_logits else model_config.dtype,
        remat_policy=model_config.remat_policy,
        kernels=model_config.kernels,
        batch_size=batch_size,
        lengths=(enc_len, dec_len),
    )


def slice_mesh(topology: str, num_partitions: int | None = None, model_parallel_submesh=None):
    """The trainer's ('data', 'model') mesh (`partitioning.make_mesh`) over a TPU slice's devices;
    what is not given here, gin binds (NUM_PARTITIONS, MODEL_PARALLEL_SUBMESH), as for `train`."""
    devices = topology_devices(topology)
    given = {"num_partitions": num_partitions, "model_parallel_submesh": model_parallel_submesh}
    try:
        return partitioning.make_mesh(
            devices=devices, **{k: v for k, v in given.items() if v is not None}
        )
    except ValueError as e:
        raise UserError(f"--topology {topology}: {e}") from None


def plan_from_gin(data_dir: str | None = None) -> plan_lib.StepPlan:
    """The step `dsbs train` would run under the current gin config: `train`'s own settings (its
    defaults, gin's bindings) through the trainer's `plan_step`; nothing is defaulted here."""
    settings = trainer.settings_from_gin()
    examples = {  # what the step depends on and has no default
        "mixture_or_task_name": "MIXTURE_OR_TASK_NAME=\"'svamp_dsbs'\"",
        "task_feature_lengths": "TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\"",
        "train_steps": "TRAIN_STEPS=10000 (the learning-rate schedule is part of the step)",
    }
    for name, example in examples.items():
        if settings[name] is gin.REQUIRED:
            raise UserError(f"{example.split('=')[0]} is not set: e.g. --gin.{example}")
    mixture, lengths = settings["mixture_or_task_name"], settings["task_feature_lengths"]
    weighting.tasks_and_rates(mixture)  # an unknown name: one line
    tasks_lib.bind_tasks(mixture, data_dir, settings["vocabulary_path"])
    checks.check_train_settings(
        mixture, lengths, settings["train_steps"], settings["batch_size"],
        settings["train_split"], check_lengths=False,
    )  # fmt: skip
    plan = plan_lib.plan_step(
        mixture, lengths, settings["train_steps"], settings["batch_size"],
        settings["model_config"], settings["loss_weighting"], settings["z_loss"],
    )  # fmt: skip
    if not plan.model_config.vocab_size:
        raise UserError(
            "VOCAB_SIZE is 0 and the tasks' vocabulary gives none: set --gin.VOCAB_SIZE"
        )
    return plan


def lower_step(programs: step_lib.Programs, mesh, batch_size: int, enc_len: int, dec_len: int):
    """The train step of `programs` lowered on `mesh` with abstract inputs (nothing is run)."""
    if batch_size % mesh.shape["data"]:
        raise UserError(
            f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis "
            f"({mesh.shape['data']})"
        )
    batch = abstract_batch(batch_size, enc_len, dec_len, partitioning.data_sharding(mesh))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    try:
        return programs.step.lower(
            programs.abstract_params, programs.abstract_opt, scalar, batch, key
        )
    except ValueError as e:  # e.g. heads or mlp not divisible by the 'model' axis
        first = str(e).strip().splitlines()[0]
        raise UserError(f"the model does not split over mesh {dict(mesh.shape)}: {first}") from None


def lower_plan(plan: plan_lib.StepPlan, mesh, rules):
    """The planned train step built as `train` builds it (`plan.build_step`) and lowered on
    `mesh`: (the built programs, the lowered step)."""
    programs = plan_lib.build_step(plan, mesh, rules)
    with mesh, nn.logical_axis_rules(rules):
        return programs, lower_step(programs, mesh, plan.batch_size, *plan.lengths)


def compile_plan(plan: plan_lib.StepPlan, mesh, rules, topology: str) -> CompileReport:
    """Compiles the planned train step for the TPU slice the mesh lies on, with its figures."""
    programs, lowered = lower_plan(plan, mesh, rules)
    return compile_lowered(
        lowered, programs, mesh, plan.batch_size, *plan.lengths, topology, programs.model.config
    )
