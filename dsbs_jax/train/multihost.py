"""Multi-host training: one process per host, one program for every host.

`initialize()` joins the processes into one JAX runtime with `jax.distributed.initialize()`.
Where the coordinator comes from, first match wins:

1. explicit arguments (`dsbs train --coordinator_address=HOST:PORT --num_processes=N
   --process_id=I`);
2. the environment: DSBS_COORDINATOR, DSBS_NUM_PROCESSES, DSBS_PROCESS_ID
   (and DSBS_LOCAL_DEVICE_IDS, comma-separated, to give a process some of the host's GPUs);
3. the cluster: a SLURM job step (SLURM_JOB_NODELIST, SLURM_NTASKS, SLURM_PROCID) or a TPU VM
   slice, which JAX detects by itself.

On CPU the cross-process collectives go through gloo. After `initialize()` each host reads its
own shard of the data (seqio.ShardInfo by process index, in input_pipeline), the trainer assembles
global batches from host-local data, only process 0 writes config.gin and metrics, and every
process takes part in writing and restoring checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from typing import Any

import jax
import numpy as np

from dsbs_jax.errors import UserError

log = logging.getLogger("dsbs.multihost")

DEFAULT_PORT = 12345  # used when a coordinator address has no port (SLURM: the first node's)


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to reach the coordinator; None fields are left to JAX's own cluster detection."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    source: str = "auto"


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}: expected an integer, got {value!r}") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise UserError(f"SLURM_JOB_NODELIST: cannot read {nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: dict[str, str] | None = None,
) -> ClusterSpec:
    """Works out the cluster from arguments, then DSBS_* variables, then SLURM; else 'auto'."""
    env = dict(os.environ if env is None else env)
    ids = env.get("DSBS_LOCAL_DEVICE_IDS")
    local_ids = tuple(int(i) for i in ids.split(",") if i) if ids else None
    if coordinator_address or num_processes is not None or process_id is not None:
        spec = ClusterSpec(coordinator_address, num_processes, process_id, local_ids, "flags")
    elif env.get("DSBS_COORDINATOR"):
        spec = ClusterSpec(
            env["DSBS_COORDINATOR"],
            _int(env.get("DSBS_NUM_PROCESSES"), "DSBS_NUM_PROCESSES"),
            _int(env.get("DSBS_PROCESS_ID"), "DSBS_PROCESS_ID"),
            local_ids,
            "env",
        )
    elif env.get("SLURM_JOB_NODELIST") and env.get("SLURM_NTASKS"):
        port = env.get("DSBS_COORDINATOR_PORT", str(DEFAULT_PORT))
        spec = ClusterSpec(
            f"{first_slurm_host(env['SLURM_JOB_NODELIST'])}:{port}",
            _int(env["SLURM_NTASKS"], "SLURM_NTASKS"),
            _int(env.get("SLURM_PROCID"), "SLURM_PROCID"),
            local_ids,
            "slurm",
        )
    else:
        return ClusterSpec(local_device_ids=local_ids)
    missing = [
        f.name
        for f in dataclasses.fields(spec)
        if f.name in ("coordinator_address", "num_processes", "process_id")
        and getattr(spec, f.name) is None
    ]
    if missing:
        raise UserError(
            f"multi-host ({spec.source}): also give {', '.join(missing)} "
            "(--coordinator_address, --num_processes, --process_id or DSBS_COORDINATOR, "
            "DSBS_NUM_PROCESSES, DSBS_PROCESS_ID)"
        )
    if not 0 <= spec.process_id < spec.num_processes:
        raise UserError(
            f"multi-host: process_id {spec.process_id} is not in [0, {spec.num_processes})"
        )
    if ":" not in spec.coordinator_address:
        spec = dataclasses.replace(
            spec, coordinator_address=f"{spec.coordinator_address}:{DEFAULT_PORT}"
        )
    return spec


def _on_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.split(",")[0].strip() == "cpu"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ClusterSpec:
    """Joins this process to the others (jax.distributed.initialize); returns how it found them.

    Call it first, before anything touches a device. Idempotent.
    """
    spec = resolve(coordinator_address, num_processes, process_id)
    if _on_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if jax.distributed.is_initialized():
        return spec
    kwargs: dict[str, Any] = {}
    if spec.source != "auto":
        kwargs = {
            "coordinator_address": spec.coordinator_address,
            "num_processes": spec.num_processes,
            "process_id": spec.process_id,
        }
    if spec.local_device_ids is not None:
        kwargs["local_device_ids"] = list(spec.local_device_ids)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise UserError(
            f"jax.distributed.initialize ({spec.source}) failed: {str(e).splitlines()[0]}"
        ) from None
    log.info(
        "process %d of %d (%s), %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        spec.source,
        jax.local_device_count(),
        jax.device_count(),
    )
    return spec


def agree(flag: bool) -> bool:
    """Process 0's value of `flag`, on every process (a collective: all must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))


def checkpoint_due(checkpointer, step: int, final: bool, sync_point: bool) -> bool:
    """Whether every process writes a checkpoint at `step`; they must all agree, or they hang.

    Step periods and the final step agree by themselves. The timer (`every_secs`) differs per
    host, so with several processes it is consulted only at `sync_point` steps, where process
    0's reading is broadcast to all.
    """
    if jax.process_count() == 1:
        return checkpointer.due(step, final=final)
    if final or (checkpointer.every_steps and step % checkpointer.every_steps == 0):
        return True
    if not (checkpointer.every_secs and sync_point):
        return False
    return agree(checkpointer.due(step))


def free_port() -> int:
    """An unused TCP port on localhost (for a local coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
