"""`dsbs predict`: a JSONL file of inputs in, predictions (and rationales) out (runs/infer.gin)."""

from __future__ import annotations

from dsbs_jax.commands import _gin_command

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    parser.add_argument("--input_file", required=True, help="JSONL: `input` or the card's fields")
    parser.add_argument(
        "--output_file", required=True, help="JSONL: id, input, prediction[, rationale]"
    )
    parser.add_argument(
        "--explain", action="store_true", help="also decode the `explain:` rationale"
    )


def run(args) -> int:
    from dsbs_jax.train import inference

    kwargs = _gin_command.setup(args)
    n = inference.predict_file(args.input_file, args.output_file, explain=args.explain, **kwargs)
    print(f"wrote {n} predictions to {args.output_file}")
    return 0
