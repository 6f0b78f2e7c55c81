"""Checkpoints from elsewhere: Hugging Face T5 (`hf`) and T5X (`t5x`), both ways.

`load_any(path, abstract_params)` is what `INITIAL_CHECKPOINT_PATH` goes through
(`dsbs_jax.train.checkpoints.load_params`) for anything that is not one of our own checkpoints:
a HF T5 directory, or a T5X checkpoint in the msgpack + tensorstore or the orbax layout
(a MODEL_DIR, a `checkpoint_<step>` folder or the msgpack `checkpoint` file).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dsbs_jax.errors import UserError
from dsbs_jax.interop import hf, t5x

Params = dict[str, Any]
_LOGITS = ("decoder", "logits_dense", "kernel")
_EMBEDDING = ("token_embedder", "embedding")


def detect(path: str | os.PathLike) -> str | None:
    """'hf', 't5x' or None: the kind of checkpoint at `path`."""
    if os.path.isdir(path) and hf.is_hf_dir(path):
        return "hf"
    if t5x.is_t5x_checkpoint(path):
        return "t5x"
    return None


def load_params_numpy(path: str | os.PathLike) -> Params | None:
    """Our parameter tree (numpy) from a HF or T5X checkpoint; None if `path` is neither."""
    kind = detect(path)
    if kind == "hf":
        return hf.load_hf(path)[0]
    if kind == "t5x":
        return t5x.load_t5x(path)
    return None


def fit_to(params: Params, abstract_params: Any, where: str) -> dict[tuple[str, ...], np.ndarray]:
    """Flat `{path: array}` matching the abstract tree's paths, shapes and dtypes.

    A checkpoint with a tied output layer fits a model with `logits_dense`: the kernel becomes
    embedding.T / sqrt(d_model), which gives the same logits. Anything else that differs is
    an error naming the first difference.
    """
    from flax import traverse_util  # noqa: PLC0415

    flat = dict(traverse_util.flatten_dict(params))
    want = traverse_util.flatten_dict(abstract_params)
    if _LOGITS in want and _LOGITS not in flat and _EMBEDDING in flat:
        emb = np.asarray(flat[_EMBEDDING], np.float32)
        flat[_LOGITS] = emb.T / np.sqrt(emb.shape[1])
    if _LOGITS in flat and _LOGITS not in want:
        raise UserError(
            f"{where}: the checkpoint has an untied output layer (logits_dense); "
            "set t5.T5Config.logits_via_embedding = False"
        )
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        parts = [_first(missing, "missing"), _first(extra, "unexpected")]
        raise UserError(
            f"{where}: the checkpoint does not match the model config "
            f"({'; '.join(p for p in parts if p)}); check the number of layers and heads"
        )
    out = {}
    for key, spec in want.items():
        arr = np.asarray(flat[key])
        if tuple(arr.shape) != tuple(spec.shape):
            hint = (
                " (check VOCAB_SIZE / the vocabulary)"
                if "embedding" in key or key == _LOGITS
                else ""
            )
            raise UserError(
                f"{where}: {'/'.join(key)} has shape {tuple(arr.shape)} in the checkpoint, "
                f"{tuple(spec.shape)} in the model config{hint}"
            )
        out[key] = arr.astype(spec.dtype) if arr.dtype != spec.dtype else arr
    return out


def _first(keys: list[tuple[str, ...]], what: str) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"{what} {'/'.join(keys[0])}{more}"


def place(flat: dict[tuple[str, ...], np.ndarray], abstract_params: Any) -> Params:
    """Device arrays with the shardings that the abstract leaves carry (replicated if none)."""
    import jax  # noqa: PLC0415
    from flax import traverse_util  # noqa: PLC0415

    want = traverse_util.flatten_dict(abstract_params)
    placed = {}
    for key, spec in want.items():
        arr = flat[key]
        sharding = getattr(spec, "sharding", None)
        if sharding is None:
            placed[key] = jax.device_put(arr)
        else:
            placed[key] = jax.make_array_from_callback(
                arr.shape, sharding, lambda index, a=arr: a[index]
            )
    return traverse_util.unflatten_dict(placed)


def load_any(path: str | os.PathLike, abstract_params: Any) -> Params | None:
    """Parameters from a HF or T5X checkpoint onto the abstract tree's shardings, or None.

    `abstract_params`: the model's parameter tree of `jax.ShapeDtypeStruct`s (with shardings).
    """
    params = load_params_numpy(path)
    if params is None:
        return None
    return place(fit_to(params, abstract_params, os.fspath(path)), abstract_params)
