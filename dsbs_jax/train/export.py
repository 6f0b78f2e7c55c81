"""A checkpoint out in Hugging Face or T5X format: what `dsbs export` does.

The checkpoint may be ours (a MODEL_DIR: its latest step; or a `checkpoint_<step>` folder), a T5X
checkpoint or a HF directory (`read_checkpoint`). The network's sizes come from gin (the given
gin files, else the run's MODEL_DIR/config.gin) or the HF config.json (`model_config`); the
vocabulary size and whether the output layer is tied come from the checkpoint's own shapes
(`config_from_shapes`). For HF, the sentencepiece model copied as spiece.model is the first of
four sources that gives one (`find_vocabulary`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from flax import traverse_util

import dsbs_jax.tasks  # noqa: F401 - registers the tasks (a run's vocabulary is its task's)
from dsbs_jax import run_dir
from dsbs_jax.data.tasks import bind_tasks
from dsbs_jax.data.vocab import get_vocabulary
from dsbs_jax.errors import UserError
from dsbs_jax.interop import detect, fit_to, hf, load_params_numpy, t5x
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import checkpoints, gin_utils

Params = dict[str, Any]
FORMATS = ("hf", "t5x")
VOCAB_ENV = "DSBS_VOCAB"  # a sentencepiece model to copy when nothing closer names one
_LOGITS = ("decoder", "logits_dense", "kernel")
_EMBEDDING = ("token_embedder", "embedding")


def native_params_dir(path: str | os.PathLike) -> str | None:
    """The `params` item of one of our checkpoints (a MODEL_DIR gives its latest step's), or
    None when `path` is not ours."""
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "params")):
        return os.path.join(path, "params")
    steps = checkpoints.checkpoint_steps(path)
    return os.path.join(path, f"checkpoint_{steps[0]}", "params") if steps else None


def read_checkpoint(path: str | os.PathLike) -> tuple[Params, str, str | None]:
    """(the parameters as numpy, the source kind 'native', 't5x' or 'hf', our params dir or
    None); a damaged checkpoint of ours, or anything else, is one line."""
    path = os.fspath(path)
    native = native_params_dir(path)
    if native is not None:
        params = checkpoints.read_or_explain(
            os.path.dirname(native),
            lambda ckpt: t5x.read_orbax_state(os.path.join(ckpt, "params"), subtree=None),
        )
        return params, "native", native
    kind = detect(path)
    if kind is None:
        raise UserError(f"{path}: not a dsbs-jax, T5X or Hugging Face checkpoint")
    return load_params_numpy(path), kind, None


def run_config_path(native: str) -> str:
    """MODEL_DIR/config.gin of the run whose `params` dir this is."""
    return os.path.join(os.path.dirname(os.path.dirname(native)), run_dir.CONFIG_FILE)


def model_config(
    checkpoint: str | os.PathLike,
    kind: str,
    native: str | None,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    gin_search_paths: Sequence[str] = (),
) -> tuple[T5Config, str | None]:
    """(the network's config, the gin macro VOCABULARY_PATH or None): from the gin files and
    bindings when given, else from the run's config.gin (ours), else from config.json (HF).
    The vocabulary size is a placeholder: `config_from_shapes` sets it from the checkpoint."""
    if gin_files:
        gin_utils.parse_gin(gin_files, gin_bindings, gin_search_paths)
    elif native is not None:
        config_gin = run_config_path(native)
        if not os.path.isfile(config_gin):
            raise UserError(f"{checkpoint}: no config.gin; give --gin_file=models/...")
        gin_utils.parse_gin([config_gin], gin_bindings, gin_search_paths)
    elif kind == "hf":
        return hf.config_from_hf(checkpoint), None
    else:
        raise UserError("a T5X checkpoint needs the model's gin file: --gin_file=models/...")
    try:
        config = T5Config(vocab_size=1)  # the checkpoint's embedding gives the real size
    except TypeError as e:
        raise UserError(f"gin: the model config is incomplete ({e})") from None
    try:
        vocabulary = gin.query_parameter("%VOCABULARY_PATH")
    except ValueError:
        vocabulary = None
    return config, vocabulary if isinstance(vocabulary, str) else None


def config_from_shapes(config: T5Config, params: Params, where: str = "the checkpoint") -> T5Config:
    """`config` with what the checkpoint's shapes say: the vocabulary size (the embedding's
    rows) and whether the output layer is tied (no `decoder/logits_dense`)."""
    flat = traverse_util.flatten_dict(params)
    emb = flat.get(_EMBEDDING)
    if emb is None:
        raise UserError(f"{where}: no token_embedder/embedding in the checkpoint")
    return dataclasses.replace(
        config,
        vocab_size=int(emb.shape[0]),
        logits_via_embedding=_LOGITS not in flat,
        kernels="plain",  # only the parameters' shapes are read: the same for every choice
    )


def fit_params(params: Params, config: T5Config, where: str) -> Params:
    """The checkpoint's parameters checked against the network `config` builds (names, shapes;
    cast to its dtypes); a difference is one line naming it."""
    tokens = np.ones((1, 4), np.int32)
    abstract = jax.eval_shape(
        lambda r: Transformer(config).init(r, tokens, tokens, tokens, enable_dropout=False),
        jax.random.PRNGKey(0),
    )["params"]
    return traverse_util.unflatten_dict(fit_to(params, nn.meta.unbox(abstract), where))


def run_vocabulary(native: str | None, data_dir: str | None = None) -> str | None:
    """The sentencepiece model one of our runs trained with: the VOCABULARY_PATH of its
    config.gin, else the vocabulary of its MIXTURE_OR_TASK_NAME under `data_dir` (None:
    $DSBS_DATA_DIR); None when there is none to be found."""
    if native is None:
        return None
    config_gin = run_config_path(native)
    if not os.path.isfile(config_gin):
        return None
    macros = gin_utils.file_macros(config_gin)
    path = macros.get("VOCABULARY_PATH")
    if isinstance(path, str) and path:
        return path
    name = macros.get("MIXTURE_OR_TASK_NAME")
    if not isinstance(name, str):
        return None
    try:
        bind_tasks(name, data_dir)
        path = getattr(get_vocabulary(name), "sentencepiece_model_file", None)
    except ValueError:  # a task this process does not know
        return None
    return path if path and os.path.isfile(path) else None


def find_vocabulary(
    given: str | os.PathLike | None,
    gin_vocabulary: str | None,
    native: str | None,
    data_dir: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """The sentencepiece model to export with, from the first source that names one: `given`
    (--vocabulary; it must exist), the gin macro VOCABULARY_PATH, $DSBS_VOCAB, the run's own
    (`run_vocabulary`). None when none does."""
    if given:
        if not os.path.isfile(given):
            raise UserError(f"{given}: no such sentencepiece model")
        return os.fspath(given)
    return gin_vocabulary or environ.get(VOCAB_ENV) or run_vocabulary(native, data_dir)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: where, in which format, from which kind of source."""

    path: str  # the HF directory, or the T5X checkpoint_<step> folder
    format: str
    source_kind: str  # 'native', 't5x' or 'hf'
    vocab_size: int
    vocabulary: str | None = None  # the sentencepiece model copied (hf)
    t5x_layout: str | None = None


def export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "hf",
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    gin_search_paths: Sequence[str] = (),
    data_dir: str | None = None,
    vocabulary: str | os.PathLike | None = None,
    dtype: str | None = None,
    t5x_layout: str = "msgpack",
    step: int | None = None,
) -> ExportResult:
    """Writes `checkpoint` (ours, T5X or HF) to `out`: a Hugging Face T5 directory (config.json,
    model.safetensors and, when `find_vocabulary` finds one, spiece.model; `dtype` casts the
    weights) or, with format 't5x', a T5X checkpoint_<step> in `t5x_layout` ('msgpack' or
    'orbax'; `step` defaults to the source's). `gin_*`: the model's gin config (needed for T5X
    sources; ours default to their config.gin). `data_dir`: where the run's data and vocabulary
    are, for the vocabulary (default $DSBS_DATA_DIR)."""
    checkpoint = os.fspath(checkpoint)
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if not os.path.exists(checkpoint):
        raise UserError(f"{checkpoint}: no such checkpoint")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: is a file, expected a directory")
    params, kind, native = read_checkpoint(checkpoint)
    config, gin_vocabulary = model_config(
        checkpoint, kind, native, gin_files, gin_bindings, gin_search_paths
    )
    config = config_from_shapes(config, params, checkpoint)
    params = fit_params(params, config, checkpoint)
    if format == "hf":
        vocab = find_vocabulary(vocabulary, gin_vocabulary, native, data_dir)
        hf.save_hf(params, config, out, vocab_path=vocab, dtype=dtype)
        return ExportResult(os.fspath(out), format, kind, config.vocab_size, vocab)
    if step is None:
        step = (run_dir.step_of(os.path.dirname(native)) if native else None) or 0
    where = t5x.save_t5x(params, out, step, layout=t5x_layout)
    return ExportResult(where, format, kind, config.vocab_size, t5x_layout=t5x_layout)
