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
The work is `dsbs_jax.train.export.export`.
"""

from __future__ import annotations

from dsbs_jax.commands import _gin_command

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


def run(args) -> int:
    gin_files, bindings, search_paths = _gin_command.gin_args(args)
    from dsbs_jax.train import export

    result = export.export(
        args.checkpoint, args.out, format=args.format, gin_files=gin_files,
        gin_bindings=bindings, gin_search_paths=search_paths, data_dir=args.tfds_data_dir,
        vocabulary=args.vocabulary, dtype=args.dtype, t5x_layout=args.t5x_layout, step=args.step,
    )  # fmt: skip
    if result.format == "t5x":
        print(f"wrote {result.path} (T5X {result.t5x_layout} layout, {result.source_kind} source)")
        return 0
    print(f"wrote {result.path} (Hugging Face T5, {result.source_kind} source, vocab "
          f"{result.vocab_size})")  # fmt: skip
    if result.vocabulary:
        print(f"  spiece.model <- {result.vocabulary}")
    else:
        print(
            "  no vocabulary copied: none found for this checkpoint (give --vocabulary "
            "PATH, or --tfds_data_dir where the run's data and vocabulary are)"
        )
    return 0
