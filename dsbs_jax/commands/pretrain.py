"""`dsbs pretrain`: T5's span-corruption pretraining in one line, with runs/pretrain.gin.

    dsbs pretrain --text corpus.txt --vocabulary spm.model --model_dir /tmp/pretrain \\
      --model quickstart --steps 10000 --batch_size 32 [--lengths 512,114] [--gin.NAME=value]

The same trainer as `dsbs train` (its progress lines, MODEL_DIR layout and resuming); at the end
it prints the final loss, the checkpoint to start students from, and the throughput.
"""

from __future__ import annotations

from dsbs_jax.commands import _gin_command

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    corpus = parser.add_mutually_exclusive_group(required=True)
    corpus.add_argument(
        "--text", nargs="+", metavar="FILE", help="text files, one document per line (globs ok)"
    )
    corpus.add_argument("--jsonl", nargs="+", metavar="FILE", help="JSON-lines files (globs ok)")
    parser.add_argument(
        "--field", default="text", help="the JSON-lines field holding the text (default text)"
    )
    parser.add_argument(
        "--vocabulary", required=True, help="sentencepiece model (100 extra ids are added)"
    )
    parser.add_argument("--model_dir", required=True, help="where checkpoints go (MODEL_DIR)")
    parser.add_argument(
        "--model",
        default="quickstart",
        help="a model gin of the package (quickstart, micro, t5_1_1_tiny, t5_1_1_small, ...) "
        "or FILE.gin (default quickstart)",
    )
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--batch_size", type=int, required=True, help="sequences per batch")
    parser.add_argument(
        "--lengths",
        default="512",
        help="INPUTS[,TARGETS] tokens (default 512, whose targets length is 114, as in T5)",
    )
    parser.epilog = "gin bindings: --gin.NAME=value (runs/pretrain.gin's macros, as in dsbs train)"


def run(args) -> int:
    from dsbs_jax.train import pretrain as pretrain_lib

    bindings = _gin_command.gin_bindings(args)
    result = pretrain_lib.pretrain(
        args.model_dir,
        args.vocabulary,
        steps=args.steps,
        batch_size=args.batch_size,
        text_files=args.text,
        jsonl_files=args.jsonl,
        jsonl_field=args.field,
        model=args.model,
        lengths=pretrain_lib.parse_lengths(args.lengths),
        gin_bindings=bindings,
    )
    loss = f"loss {result.loss:.4f}; " if result.loss is not None else ""
    print(f"finished at step {result.step}; {loss}checkpoint {result.checkpoint}")
    if result.seconds > 0:
        print(
            f"trained at {result.target_tokens_per_second:,.0f} target tokens/s, "
            f"{result.sequences_per_second:.2f} sequences/s (after the first step)"
        )
    return 0
