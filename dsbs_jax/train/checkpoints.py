"""Checkpoints with orbax, in T5X's MODEL_DIR layout: `MODEL_DIR/checkpoint_<step>/`.

Each checkpoint holds three items: `params`, `opt_state` (both sharded arrays, restored onto the
current mesh) and `meta` (JSON: step and data position), so a run resumes exactly where it
stopped, and `INITIAL_CHECKPOINT_PATH` can take the parameters alone.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from dsbs_jax.errors import UserError

PREFIX = "checkpoint"


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


def is_native_checkpoint(path: str) -> bool:
    """Whether `path` is one of our `checkpoint_<step>` folders (or a MODEL_DIR holding them)."""
    return os.path.isdir(os.path.join(path, "params")) or bool(_latest_in(path))


def _latest_in(model_dir: str) -> str | None:
    if not os.path.isdir(model_dir):
        return None
    steps = []
    for name in os.listdir(model_dir):
        head, _, tail = name.partition("_")
        if (
            head == PREFIX
            and tail.isdigit()
            and os.path.isdir(os.path.join(model_dir, name, "params"))
        ):
            steps.append(int(tail))
    return os.path.join(model_dir, f"{PREFIX}_{max(steps)}") if steps else None


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
            try:
                from dsbs_jax.interop import load_any  # noqa: PLC0415
            except ImportError:
                load_any = None
            if load_any is not None:
                params = load_any(path, abstract_params)
                if params is not None:
                    return params
            raise UserError(f"{path}: not a dsbs-jax, T5X or Hugging Face checkpoint")
        path = latest
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(os.path.abspath(path), "params"), abstract_params
    )
    return restored


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry shardings, for restoring onto a mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
