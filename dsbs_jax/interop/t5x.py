"""T5X checkpoints: read and write both of T5X's layouts for the T5 v1.1 parameter tree.

A T5X checkpoint is `MODEL_DIR/checkpoint_<step>/` holding the train state's state dict,
`{'target': params, 'state': {'step': ..., 'param_states': optimizer slots}}`, in one of two
layouts (as written by `t5x/checkpoints.py`):

- **msgpack + tensorstore** (`Checkpointer`; the public checkpoints under
  gs://t5-data/pretrained_models/t5x/): a msgpack file `checkpoint` holding
  `{'version': 3, 'optimizer': state_dict}`, where each array is either stored inline or
  replaced by a tensorstore spec (a dict: driver `zarr`, kvstore `file` or `gcs`, a path
  relative to the checkpoint folder such as `target.encoder.layers_0.attention.query.kernel`,
  and metadata with shape, chunks and a gzip or zstd compressor). Version-0 files hold the
  state dict itself, without the `optimizer` wrapper. Older tensorstore specs put the relative
  `path` next to `kvstore` instead of inside it.
- **orbax** (`OrbaxCheckpointManagerInterface`): item `state/` (a PyTree checkpoint of the same
  state dict, OCDBT) and item `dataset/`, with orbax's metadata files.

`target` is T5X's T5 v1.1 network tree (`t5x/examples/t5/network.py`). It has our names, and
our shapes except one: T5X's `DenseGeneral` stores attention kernels flattened to 2-D,
query/key/value [embed, heads * head_dim] and out [heads * head_dim, embed] (logical axis
`joined_kv`), where ours are [embed, heads, head_dim] and [heads, head_dim, embed]. Reading and
writing reshape them (row-major, as T5X reshapes them at run time); the number of heads comes
from each stack's `relpos_bias/rel_embedding` [heads, buckets].
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from dsbs_jax import atomic, run_dir
from dsbs_jax.errors import UserError
from dsbs_jax.model import attention_layout

CHECKPOINT_FILE = "checkpoint"
STATE_ITEM = "state"
PREFIX = run_dir.CHECKPOINT_PREFIX
VERSION = 3

Params = dict[str, Any]


_ATTENTION = ("attention", "self_attention", "encoder_decoder_attention")


def _map_attention(params: Params, fn) -> Params:
    """Applies fn(kernel, heads, name) to every attention kernel; returns a new tree."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        if stack not in params:
            continue
        heads = int(np.shape(params[stack]["relpos_bias"]["rel_embedding"])[0])
        new_stack = dict(params[stack])
        for layer_name, layer in params[stack].items():
            if not layer_name.startswith("layers_"):
                continue
            new_layer = dict(layer)
            for att in _ATTENTION:
                if att in layer:
                    new_layer[att] = {
                        proj: {"kernel": fn(np.asarray(v["kernel"]), heads, proj)}
                        for proj, v in layer[att].items()
                    }
            new_stack[layer_name] = new_layer
        out[stack] = new_stack
    return out


def _from_joined(kernel: np.ndarray, heads: int, proj: str) -> np.ndarray:
    return kernel.reshape(attention_layout.split_shape(proj, kernel.shape, heads))


def _to_joined(kernel: np.ndarray, heads: int, proj: str) -> np.ndarray:
    return kernel.reshape(attention_layout.joined_shape(proj, kernel.shape))


def from_t5x_params(target: Params) -> Params:
    """T5X's `target` tree (2-D attention kernels) as our parameter tree."""
    return _map_attention(target, _from_joined)


def to_t5x_params(params: Params) -> Params:
    """Our parameter tree as T5X's `target` tree (2-D attention kernels)."""
    return _map_attention(params, _to_joined)


# ----------------------------------------------------------------------------------------------
# Finding a checkpoint


def _is_msgpack_checkpoint(file: str) -> bool:
    if not os.path.isfile(file):
        return False
    with open(file, "rb") as f:
        head = f.read(21)
    # A msgpack map starts with a fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf) byte; T5X's
    # TF-format checkpoints start with the text `model_checkpoint_path`.
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def _is_orbax_state(folder: str) -> bool:
    if not os.path.isdir(folder):
        return False
    names = set(os.listdir(folder))
    return bool(names & {"_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "d"}) or (
        CHECKPOINT_FILE in names and any(n.startswith("target") for n in names)
    )


def find_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[str, str] | None:
    """`(kind, location)` of a T5X checkpoint, or None if `path` is not one.

    `path` may be a MODEL_DIR (its latest step, or `step`), a `checkpoint_<step>` folder or the
    msgpack `checkpoint` file. kind is 'msgpack' (location: the msgpack file) or 'orbax'
    (location: the `state` item folder).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return ("msgpack", path) if _is_msgpack_checkpoint(path) else None
    if not os.path.isdir(path):
        return None
    state = os.path.join(path, STATE_ITEM)
    if _is_orbax_state(state):
        return "orbax", state
    file = os.path.join(path, CHECKPOINT_FILE)
    if _is_msgpack_checkpoint(file):
        return "msgpack", file
    steps = sorted(run_dir.checkpoint_steps(path))
    if step is not None:
        steps = [s for s in steps if s == step]
    for s in reversed(steps):
        found = find_checkpoint(os.path.join(path, f"{PREFIX}_{s}"))
        if found is not None:
            return found
    return None


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` holds a T5X checkpoint in either layout."""
    return find_checkpoint(path) is not None


# ----------------------------------------------------------------------------------------------
# msgpack + tensorstore


def _is_ts_spec(x: Any) -> bool:
    return isinstance(x, dict) and {"driver", "kvstore"} <= set(x)


def _local_spec(spec: dict, ckpt_dir: str) -> dict:
    """A spec as read from the msgpack, made absolute and local (gcs -> file)."""
    spec = {**spec, "kvstore": dict(spec["kvstore"])}
    metadata = dict(spec.get("metadata", {}))
    for k in ("chunks", "compressor"):  # not needed to open, and may differ from the file
        metadata.pop(k, None)
    spec["metadata"] = metadata
    kv = spec["kvstore"]
    if kv.get("driver") not in ("file", "gfile", "gcs"):
        raise UserError(f"{ckpt_dir}: unsupported tensorstore kvstore driver {kv.get('driver')!r}")
    if "path" in kv:  # tensorstore >= 0.1.14
        rel = kv["path"]
    elif "path" in spec:  # older specs keep the path beside the kvstore
        rel = spec.pop("path")
    else:
        raise UserError(f"{ckpt_dir}: a tensorstore spec without a path: {spec}")
    spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, rel)}
    return spec


def _read_ts(spec: dict, ckpt_dir: str) -> np.ndarray:
    import tensorstore as ts  # noqa: PLC0415

    local = _local_spec(spec, ckpt_dir)
    if not os.path.exists(local["kvstore"]["path"]):
        raise UserError(f"{local['kvstore']['path']}: array missing from the T5X checkpoint")
    return np.asarray(ts.open(local, open=True).result().read().result())


def read_msgpack_state(file: str | os.PathLike, subtree: str | None = "target") -> Any:
    """The state dict of a msgpack-layout checkpoint, arrays read (only `subtree` if given)."""
    from flax import serialization  # noqa: PLC0415

    file = os.fspath(file)
    with open(file, "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    if not isinstance(contents, dict):
        raise UserError(f"{file}: not a T5X checkpoint")
    state = contents["optimizer"] if contents.get("version", 0) else contents
    if subtree is not None:
        if subtree not in state:
            raise UserError(f"{file}: no {subtree!r} in this T5X checkpoint")
        state = state[subtree]
    ckpt_dir = os.path.dirname(os.path.abspath(file))

    def read(x):
        if _is_ts_spec(x):
            return _read_ts(x, ckpt_dir)
        if isinstance(x, dict):
            return {k: read(v) for k, v in x.items()}
        return np.asarray(x) if x is not None else None

    return read(state)


def _chunks(shape: tuple[int, ...], itemsize: int, target_bytes: int = 64 << 20) -> list[int]:
    """Divisors of each dimension, largest first reduced, until a chunk fits target_bytes."""
    factors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
    while factors and int(np.prod([f[-1] for f in factors])) * itemsize > target_bytes:
        i = max(range(len(factors)), key=lambda j: factors[j][-1])
        if factors[i][-1] == 1:
            break
        factors[i].pop()
    return [f[-1] for f in factors]


def _write_msgpack_tree(tree: Any, ckpt_dir: str, prefix: str, inline_rank0: bool) -> Any:
    import tensorstore as ts  # noqa: PLC0415

    if isinstance(tree, dict):
        return {
            k: _write_msgpack_tree(v, ckpt_dir, f"{prefix}.{k}" if prefix else k, inline_rank0)
            for k, v in tree.items()
        }
    if tree is None:
        return None
    arr = np.asarray(tree)
    if inline_rank0 and arr.ndim == 0:
        return arr  # scalars (the step) live in the msgpack itself
    spec = {
        "driver": "zarr",
        "dtype": np.dtype(arr.dtype).name,
        "kvstore": {"driver": "file", "path": prefix},
        "metadata": {
            "compressor": {"id": "gzip"},
            "shape": list(arr.shape),
            "chunks": _chunks(arr.shape, arr.dtype.itemsize),
        },
    }
    absolute = {**spec, "kvstore": {"driver": "file", "path": os.path.join(ckpt_dir, prefix)}}
    ts.open(absolute, create=True, open=True).result().write(arr).result()
    return ts.Spec(spec).to_json()


def write_msgpack_checkpoint(
    model_dir: str | os.PathLike,
    step: int,
    params: Params,
    param_states: Any = None,
) -> str:
    """Writes `MODEL_DIR/checkpoint_<step>/` in T5X's msgpack + tensorstore layout.

    `params` is our tree (attention kernels are flattened to T5X's 2-D form); `param_states`
    is written as given, so it must already be in T5X's shapes. Every array goes to its own zarr (gzip) folder named by its path (`target.encoder...`,
    `state.param_states...`); the step stays inline. Returns the checkpoint folder.
    """
    from flax import serialization  # noqa: PLC0415

    final = os.path.join(os.fspath(model_dir), f"{PREFIX}_{step}")
    tmp = atomic.temporary_name(final)
    os.makedirs(tmp, exist_ok=True)
    state = {"target": to_t5x_params(params), "state": {"step": np.asarray(step, np.int32)}}
    if param_states is not None:
        state["state"]["param_states"] = param_states
    written = _write_msgpack_tree(state, tmp, "", inline_rank0=True)
    with open(os.path.join(tmp, CHECKPOINT_FILE), "wb") as f:
        f.write(serialization.msgpack_serialize({"version": VERSION, "optimizer": written}))
    atomic.replace_dir(tmp, final)
    return final


# ----------------------------------------------------------------------------------------------
# orbax


def read_orbax_state(state_dir: str | os.PathLike, subtree: str | None = "target") -> Any:
    """The state dict (or one `subtree` of it) of an orbax-layout T5X checkpoint, as numpy."""
    import jax  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415

    state_dir = os.path.abspath(os.fspath(state_dir))
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(state_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if subtree is not None:
        if subtree not in tree:
            raise UserError(f"{state_dir}: no {subtree!r} in this T5X checkpoint")
        tree = {subtree: tree[subtree]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    out = ckptr.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=tree, restore_args=restore_args, partial_restore=subtree is not None
        ),
    )
    out = jax.tree.map(np.asarray, out)
    return out[subtree] if subtree is not None else out


def write_orbax_checkpoint(
    model_dir: str | os.PathLike,
    step: int,
    params: Params,
    param_states: Any = None,
) -> str:
    """Writes `MODEL_DIR/checkpoint_<step>/state` as T5X's orbax CheckpointManager does.

    The `state` item is an OCDBT PyTree checkpoint of `{'target', 'state'}`; T5X's `dataset`
    item (the input iterator) is not written. Returns the checkpoint folder.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415

    model_dir = os.path.abspath(os.fspath(model_dir))
    final = os.path.join(model_dir, f"{PREFIX}_{step}")
    state = {"target": to_t5x_params(params), "state": {"step": np.asarray(step, np.int32)}}
    if param_states is not None:
        state["state"]["param_states"] = param_states
    # Written in a model dir of its own beside the final one, then swapped in whole: a kill
    # leaves an earlier export of this step complete.
    staging = atomic.temporary_name(final)
    if os.path.exists(staging):
        shutil.rmtree(staging)
    try:
        manager = ocp.CheckpointManager(
            staging,
            item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
            options=ocp.CheckpointManagerOptions(step_prefix=PREFIX, create=True),
        )
        manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(state)}))
        manager.wait_until_finished()
        manager.close()
        atomic.replace_dir(os.path.join(staging, f"{PREFIX}_{step}"), final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_t5x(path: str | os.PathLike, step: int | None = None) -> Params:
    """The parameters (`target`) of a T5X checkpoint in either layout, as numpy arrays."""
    found = find_checkpoint(path, step)
    if found is None:
        raise UserError(f"{os.fspath(path)}: not a T5X checkpoint")
    kind, location = found
    if kind == "msgpack":
        return from_t5x_params(read_msgpack_state(location, "target"))
    return from_t5x_params(read_orbax_state(location, "target"))


def save_t5x(
    params: Params,
    model_dir: str | os.PathLike,
    step: int,
    layout: str = "msgpack",
    param_states: Any = None,
) -> str:
    """Writes our parameters as a T5X checkpoint (`layout`: 'msgpack' or 'orbax')."""
    if layout == "msgpack":
        return write_msgpack_checkpoint(model_dir, step, params, param_states)
    if layout == "orbax":
        return write_orbax_checkpoint(model_dir, step, params, param_states)
    raise UserError(f"T5X layout must be 'msgpack' or 'orbax', got {layout!r}")
