"""Checkpoints with orbax, in T5X's MODEL_DIR layout: `MODEL_DIR/checkpoint_<step>/`.

Each checkpoint holds three items: `params`, `opt_state` (both sharded arrays, restored onto the
current mesh) and `meta` (JSON: step and data position), so a run resumes exactly where it
stopped, and `INITIAL_CHECKPOINT_PATH` can take the parameters alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from dsbs_jax import interop, run_dir
from dsbs_jax.errors import UserError

PREFIX = run_dir.CHECKPOINT_PREFIX
DAMAGED_PREFIX = "damaged_"


class Checkpointer:
    """Writes every `every_steps` steps and every `every_secs` seconds; keeps the newest `keep`."""

    def __init__(
        self,
        model_dir: str,
        keep: int | None = 3,
        every_steps: int = 1000,
        every_secs: float | None = None,
    ):
        self.every_steps = every_steps
        self.every_secs = every_secs
        self._last_save = time.monotonic()
        self.manager = ocp.CheckpointManager(
            os.path.abspath(model_dir),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, step_prefix=PREFIX, create=True, enable_async_checkpointing=True
            ),
            item_names=("params", "opt_state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int, final: bool = False) -> bool:
        """Whether `step` should be written: on the step period, the timer, or at the end."""
        if final or (self.every_steps and step % self.every_steps == 0):
            return True
        return bool(self.every_secs) and time.monotonic() - self._last_save >= self.every_secs

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._last_save = time.monotonic()

    def restore(
        self, step: int, abstract_params: Any, abstract_opt_state: Any
    ) -> tuple[Any, Any, dict]:
        """Restores a step onto the shardings that the abstract trees carry."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["params"], out["opt_state"], dict(out["meta"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def set_aside(self, step: int) -> str:
        """Renames a damaged `checkpoint_<step>` to `damaged_checkpoint_<step>` (kept, not
        deleted), so that the run writes that step again and readers skip it. Where a folder
        cannot be renamed (an object store), the damaged checkpoint is deleted instead.
        Process 0 does it; every process then re-reads the list of steps."""
        src = os.path.join(os.fspath(self.manager.directory), f"{PREFIX}_{step}")
        dst = os.path.join(os.path.dirname(src), DAMAGED_PREFIX + os.path.basename(src))
        if os.path.exists(dst):
            dst = f"{dst}.{int(time.time())}"
        if jax.process_index() == 0:
            try:
                os.rename(src, dst)
            except OSError:
                self.manager.delete(step)
                dst = "deleted"
        multihost_sync(f"set_aside_{step}")
        self.manager.reload()
        return dst


def multihost_sync(name: str) -> None:
    """Waits for every process (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    line = lines[0] if lines else type(e).__name__
    line = line.split(" See full TensorStore details")[0].split(" [tensorstore_spec")[0].rstrip(".")
    return line if len(line) <= 240 else line[:240].rsplit(" ", 1)[0] + " ..."


def restore_newest_readable(
    ckpt: Checkpointer,
    abstract_params: Any,
    abstract_opt_state: Any,
    say: Callable[[str], None] = print,
) -> tuple[int, Any, Any, dict] | None:
    """The newest checkpoint that restores: (step, params, opt_state, meta), or None if none.

    A checkpoint that fails to restore (a truncated array file under a commit marker) is set
    aside as `damaged_checkpoint_<step>` and the next older one is tried; each is said in one
    line. If every checkpoint is damaged, a UserError says so (nothing is deleted).
    """
    damaged = []
    for step in sorted(ckpt.manager.all_steps(), reverse=True):
        try:
            params, opt_state, meta = ckpt.restore(step, abstract_params, abstract_opt_state)
        except Exception as e:  # noqa: BLE001 - any failure to read it means it is damaged
            damaged.append((step, _first_line(e)))
            continue
        for bad, why in damaged:
            where = ckpt.set_aside(bad)
            kept = "deleted it" if where == "deleted" else f"set aside as {where}"
            say(f"checkpoint_{bad} is damaged ({why}); {kept}; resuming from checkpoint_{step}")
        return step, params, opt_state, meta
    if damaged:
        steps = ", ".join(f"checkpoint_{s}" for s, _ in damaged)
        raise UserError(
            f"{ckpt.manager.directory}: every checkpoint is damaged ({steps}; newest: "
            f"{damaged[0][1]}); use a new MODEL_DIR or INITIAL_CHECKPOINT_PATH"
        )
    return None


def checkpoint_steps(model_dir: str) -> list[int]:
    """Steps of our `checkpoint_<step>` folders (those holding `params`), newest first."""
    return run_dir.checkpoint_steps(model_dir, holding="params")


def read_or_explain(checkpoint_dir: str, read: Callable[[str], Any]) -> Any:
    """`read(checkpoint_dir)`; if the checkpoint is damaged, a one-line UserError naming it and
    the checkpoints beside it that `read` can load."""
    try:
        return read(checkpoint_dir)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a failure to read names the damaged checkpoint
        why = _first_line(e)
    model_dir = os.path.dirname(os.path.abspath(checkpoint_dir))
    readable = []
    for step in checkpoint_steps(model_dir):
        other = os.path.join(model_dir, f"{PREFIX}_{step}")
        if os.path.abspath(other) == os.path.abspath(checkpoint_dir):
            continue
        try:
            read(other)
        except Exception:  # noqa: BLE001, S112 - damaged too: not listed
            continue
        readable.append(other)
    found = (
        f"readable: {', '.join(readable)}" if readable else "no other checkpoint there is readable"
    )
    raise UserError(f"{checkpoint_dir} is damaged ({why}); {found}")


def is_native_checkpoint(path: str) -> bool:
    """Whether `path` is one of our `checkpoint_<step>` folders (or a MODEL_DIR holding them)."""
    return os.path.isdir(os.path.join(path, "params")) or bool(_latest_in(path))


def _latest_in(model_dir: str) -> str | None:
    steps = checkpoint_steps(model_dir)
    return os.path.join(model_dir, f"{PREFIX}_{steps[0]}") if steps else None


def load_params(path: str, abstract_params: Any) -> Any:
    """Parameters from a checkpoint, in any supported format, onto the abstract tree's shardings.

    Our own `checkpoint_<step>` folders (or a MODEL_DIR: its latest) load here; T5X and Hugging
    Face checkpoints load through `dsbs_jax.interop` when it recognises them.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such checkpoint")
    if not os.path.isdir(os.path.join(path, "params")):
        latest = _latest_in(path)
        if latest is None:
            params = interop.load_any(path, abstract_params)
            if params is not None:
                return params
            raise UserError(f"{path}: not a dsbs-jax, T5X or Hugging Face checkpoint")
        path = latest
    return read_or_explain(
        path,
        lambda p: ocp.StandardCheckpointer().restore(
            os.path.join(os.path.abspath(p), "params"), abstract_params
        ),
    )


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry shardings, for restoring onto a mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
