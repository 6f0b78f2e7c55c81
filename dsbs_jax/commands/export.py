"""`dsbs export`: a checkpoint out in Hugging Face (or T5X) format.

    dsbs export --format hf --checkpoint MODEL_DIR_or_checkpoint_N \\
      --gin_file=models/t5_1_1_small.gin --out DIR [--vocabulary spm.model]

The checkpoint may be ours (a MODEL_DIR: its latest step), a T5X checkpoint or a HF directory.
The network's sizes come from the gin model file (or MODEL_DIR/config.gin when no --gin_file
is given, or the HF config.json); the vocabulary size and whether the output layer is tied come
from the checkpoint itself. `--format hf` writes config.json + model.safetensors, and copies the
sentencepiece model as spiece.model when one is known (--vocabulary, else the gin macro
VOCABULARY_PATH, else $DSBS_VOCAB, else the vocabulary the run trained with: the VOCABULARY_PATH
or the MIXTURE_OR_TASK_NAME in MODEL_DIR/config.gin, its data under --tfds_data_dir or
$DSBS_DATA_DIR). `--format t5x` writes MODEL_DIR/checkpoint_<step>/ in
T5X's msgpack + tensorstore layout (or `--t5x_layout orbax`).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re

from dsbs_jax.commands import _gin_command
from dsbs_jax.errors import UserError
from dsbs_jax.train import gin_utils

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    parser.add_argument(
        "--format",
        choices=("hf", "t5x"),
        default="hf",
        help="hf: a Hugging Face transformers T5 directory (default); t5x: a T5X checkpoint",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="MODEL_DIR, checkpoint_<step>, T5X or HF checkpoint"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--vocabulary",
        default=None,
        help="sentencepiece model to copy as spiece.model (hf; default: the run's own)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None, help="cast the weights (hf)"
    )
    parser.add_argument(
        "--t5x_layout", choices=("msgpack", "orbax"), default="msgpack", help="T5X layout"
    )
    parser.add_argument("--step", type=int, default=None, help="T5X step (default: the source's)")
    _gin_command.add_gin_arguments(parser)


def _native_dir(path: str) -> str | None:
    """The `params` item of one of our checkpoints (a MODEL_DIR gives its latest step)."""
    from dsbs_jax.train import checkpoints

    if os.path.isdir(os.path.join(path, "params")):
        return os.path.join(path, "params")
    steps = checkpoints.checkpoint_steps(path)
    return os.path.join(path, f"checkpoint_{steps[0]}", "params") if steps else None


def _step_of(params_dir: str | None) -> int:
    from dsbs_jax import run_dir

    return (run_dir.step_of(os.path.dirname(params_dir)) if params_dir else None) or 0


def _read_params(path: str):
    """(params as numpy, source kind, our params dir or None)."""
    from dsbs_jax import interop
    from dsbs_jax.interop import t5x
    from dsbs_jax.train import checkpoints

    native = _native_dir(path)
    if native is not None:
        params = checkpoints.read_or_explain(
            os.path.dirname(native),
            lambda ckpt: t5x.read_orbax_state(os.path.join(ckpt, "params"), subtree=None),
        )
        return params, "native", native
    kind = interop.detect(path)
    if kind is None:
        raise UserError(f"{path}: not a dsbs-jax, T5X or Hugging Face checkpoint")
    return interop.load_params_numpy(path), kind, None


def _model_config(args, kind: str, native: str | None):
    from dsbs_jax.interop import hf
    from dsbs_jax.model.t5 import T5Config

    if args.gin_file:
        bindings, rest = _gin_command.split_gin_args(args.gin_bindings)
        if rest:
            raise UserError(f"unrecognized arguments: {' '.join(rest)}")
        paths = [p for p in args.gin_search_paths.split(",") if p]
        gin_utils.parse_gin(args.gin_file, bindings, paths)
    elif native is not None:
        config_gin = os.path.join(os.path.dirname(os.path.dirname(native)), "config.gin")
        if not os.path.isfile(config_gin):
            raise UserError(f"{args.checkpoint}: no config.gin; give --gin_file=models/...")
        gin_utils.parse_gin([config_gin], [], [])
    elif kind == "hf":
        return hf.config_from_hf(args.checkpoint)
    else:
        raise UserError("a T5X checkpoint needs the model's gin file: --gin_file=models/...")
    try:
        return T5Config(vocab_size=1)  # the checkpoint's embedding gives the real size
    except TypeError as e:
        raise UserError(f"gin: the model config is incomplete ({e})") from None


def _config_macro(config_gin: str, name: str):
    """A macro's literal value in a run's config.gin (`NAME = 'value'`), else None."""
    pattern = re.compile(rf"^{name}\s*=\s*(.+)$")
    with open(config_gin) as f:
        for line in f:
            found = pattern.match(line.strip())
            if found:
                try:
                    return ast.literal_eval(found.group(1))
                except (ValueError, SyntaxError):
                    return None
    return None


def _run_vocabulary(args, native: str | None) -> str | None:
    """The sentencepiece model the run trained with: its VOCABULARY_PATH, else the vocabulary
    of its MIXTURE_OR_TASK_NAME under --tfds_data_dir / $DSBS_DATA_DIR (None if not found)."""
    if native is None:
        return None
    config_gin = os.path.join(os.path.dirname(os.path.dirname(native)), "config.gin")
    if not os.path.isfile(config_gin):
        return None
    path = _config_macro(config_gin, "VOCABULARY_PATH")
    if path:
        return path
    name = _config_macro(config_gin, "MIXTURE_OR_TASK_NAME")
    if not isinstance(name, str):
        return None
    import dsbs_jax.tasks  # noqa: F401 - registers the tasks
    from dsbs_jax.data.tasks import bind_tasks
    from dsbs_jax.data.vocab import get_vocabulary

    try:
        bind_tasks(name, args.tfds_data_dir)
        path = getattr(get_vocabulary(name), "sentencepiece_model_file", None)
    except ValueError:  # a task this process does not know
        return None
    return path if path and os.path.isfile(path) else None


def _vocabulary(args, native: str | None) -> str | None:
    """--vocabulary, else the gin macro VOCABULARY_PATH, else $DSBS_VOCAB, else the run's own."""
    import gin

    if args.vocabulary:
        if not os.path.isfile(args.vocabulary):
            raise UserError(f"{args.vocabulary}: no such sentencepiece model")
        return args.vocabulary
    try:
        path = gin.query_parameter("%VOCABULARY_PATH")
    except ValueError:
        path = None
    return path or os.environ.get("DSBS_VOCAB") or _run_vocabulary(args, native)


def run(args) -> int:
    import flax.linen as nn
    import jax
    import numpy as np
    from flax import traverse_util

    from dsbs_jax import interop
    from dsbs_jax.interop import hf, t5x
    from dsbs_jax.model.t5 import Transformer

    if not os.path.exists(args.checkpoint):
        raise UserError(f"{args.checkpoint}: no such checkpoint")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: is a file, expected a directory")
    params, kind, native = _read_params(args.checkpoint)
    config = _model_config(args, kind, native)
    flat = traverse_util.flatten_dict(params)
    emb = flat.get(("token_embedder", "embedding"))
    if emb is None:
        raise UserError(f"{args.checkpoint}: no token_embedder/embedding in the checkpoint")
    config = dataclasses.replace(
        config,
        vocab_size=int(emb.shape[0]),
        logits_via_embedding=("decoder", "logits_dense", "kernel") not in flat,
        kernels="plain",  # only the parameters' shapes are read: the same for every choice
    )
    tokens = np.ones((1, 4), np.int32)
    abstract = jax.eval_shape(
        lambda r: Transformer(config).init(r, tokens, tokens, tokens, enable_dropout=False),
        jax.random.PRNGKey(0),
    )["params"]
    fitted = interop.fit_to(params, nn.meta.unbox(abstract), args.checkpoint)
    params = traverse_util.unflatten_dict(fitted)
    if args.format == "hf":
        vocab = _vocabulary(args, native)
        hf.save_hf(params, config, args.out, vocab_path=vocab, dtype=args.dtype)
        print(f"wrote {args.out} (Hugging Face T5, {kind} source, vocab {config.vocab_size})")
        if vocab:
            print(f"  spiece.model <- {vocab}")
        else:
            print(
                "  no vocabulary copied: none found for this checkpoint (give --vocabulary "
                "PATH, or --tfds_data_dir where the run's data and vocabulary are)"
            )
    else:
        step = args.step if args.step is not None else _step_of(native)
        where = t5x.save_t5x(params, args.out, step, layout=args.t5x_layout)
        print(f"wrote {where} (T5X {args.t5x_layout} layout, {kind} source)")
    return 0
