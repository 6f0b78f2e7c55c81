"""The device mesh ('data', 'model') and logical-axis partitioning rules, T5X-style.

Parameters and activations are named with logical axes (batch, length, embed, mlp, heads, kv,
joined_kv, vocab, relpos_buckets); a rule set maps each to a mesh axis or to None (replicated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = tuple[tuple[str, str | None], ...]

# 1D data parallelism + model parallelism over heads / mlp / vocab (T5X's standard rules with
# parameter_partitioning_dims=1).
STANDARD_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("layers", None),
    ("stack", None),
    ("decode_batch", "data"),
    ("cache_batch", "data"),
    ("cache_heads", "model"),
    ("cache_kv", None),
    ("cache_sequence", None),
)

# FSDP: the same, plus parameters' `embed` dimension sharded over 'data' (T5X's
# parameter_partitioning_dims=2), for models whose parameters do not fit one device.
FSDP_RULES: LogicalRules = tuple((k, "data") if k == "embed" else (k, v) for k, v in STANDARD_RULES)


@gin.configurable
def logical_axis_rules(
    kind: str = "standard", overrides: Sequence[tuple[str, str | None]] = ()
) -> LogicalRules:
    """The rule set by name (`standard` or `fsdp`), with per-axis overrides applied first."""
    base = {"standard": STANDARD_RULES, "fsdp": FSDP_RULES}
    if kind not in base:
        raise ValueError(f"logical_axis_rules.kind must be one of {sorted(base)}, got {kind!r}")
    override_keys = {k for k, _ in overrides}
    return tuple(overrides) + tuple(r for r in base[kind] if r[0] not in override_keys)


@gin.configurable
def tpu_topology(name: str | None = None) -> str | None:
    """The TPU slice a mesh gin is meant for (`v5e:4x4`, `v5p:4x4x4`; None for CPU and GPU):
    what `dsbs compile` compiles for when --topology is not given."""
    return name


@gin.configurable
def make_mesh(
    num_partitions: int = 1,
    model_parallel_submesh: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ('data', 'model') mesh over all devices.

    num_partitions: devices on 'model' (T5X's knob); the rest go to 'data'.
    model_parallel_submesh: T5X's (x, y, z, core) submesh of a TPU slice that forms one model
      replica; its product is the 'model' axis size (overrides num_partitions).
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    model = math.prod(model_parallel_submesh) if model_parallel_submesh else int(num_partitions)
    if model < 1 or n % model:
        raise ValueError(f"{n} devices cannot be split into model-parallel groups of {model}")
    shape = (n // model, model)
    try:
        from jax.experimental import mesh_utils

        granules, by_process = _dcn_granules(devices)
        if granules > 1 and shape[0] % granules == 0 and (n // granules) % model == 0:
            # Data parallelism across granules (TPU slices, or GPU hosts) over the slow DCN
            # network; model parallelism and the rest of 'data' inside each, over ICI/NVLink.
            arr = mesh_utils.create_hybrid_device_mesh(
                (shape[0] // granules, model),
                (granules, 1),
                devices=devices,
                process_is_granule=by_process,
                allow_split_physical_axes=True,
            )
        else:
            arr = mesh_utils.create_device_mesh(
                shape, devices=devices, allow_split_physical_axes=True
            )
    except (ValueError, NotImplementedError, AssertionError):
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, ("data", "model"))


def _dcn_granules(devices: Sequence[jax.Device]) -> tuple[int, bool]:
    """How many groups the devices form across DCN, and whether a group is a process.

    TPU: slices (one pod slice, however many hosts, is one ICI domain). Other platforms: hosts.
    """
    if devices[0].platform == "tpu":
        return len({getattr(d, "slice_index", 0) for d in devices}), False
    return len({d.process_index for d in devices}), True


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays: the leading (batch) dimension split over 'data'."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def on_mesh(shardings, mesh: Mesh):
    """Keeps NamedShardings on `mesh`; anything else (a scalar's single-device one) is replicated."""

    def fix(s):
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return s
        spec = getattr(s, "spec", None)
        return NamedSharding(
            mesh, spec if isinstance(s, NamedSharding) and spec is not None else PartitionSpec()
        )

    return jax.tree.map(fix, shardings)


def param_layout(
    model: nn.Module, lengths: tuple[int, int], mesh: Mesh, rules: LogicalRules, seed: int = 0
):
    """How the model's parameters lie on the mesh, without allocating them.

    Returns (init, shardings, abstract): `init(rng)` builds the unboxed parameters (jit it with
    `out_shardings=shardings`), and `abstract` holds ShapeDtypeStructs that carry the shardings
    (what checkpoints restore onto). Call inside `with mesh, nn.logical_axis_rules(rules)`.
    """

    def boxed_init(rng):
        enc = jnp.ones((1, lengths[0]), jnp.int32)
        dec = jnp.ones((1, lengths[1]), jnp.int32)
        return model.init({"params": rng}, enc, dec, dec, enable_dropout=False)["params"]

    boxed = jax.eval_shape(boxed_init, jax.random.PRNGKey(seed))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )
    return (lambda rng: nn.meta.unbox(boxed_init(rng))), shardings, abstract
