"""`dsbs inspect NAME --split S --data_dir DIR [--examples N] [--sequence_length inputs=512,
targets=256] [--json]`: a task or mixture's tasks and rates, rendered examples, token-length
percentiles with the share the given lengths would truncate, and task shares over a sample.

Reads no terminal or stdin (seqio's own inspect script does, and fails without one). Token
lengths need the vocabulary; with none trained yet it says so in one line and exits 2.
The work is `dsbs_jax.data.inspection.inspect_tasks`.
"""

from __future__ import annotations

import argparse
import json

from dsbs_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a registered task or mixture (see `dsbs tasks`)")
    parser.add_argument("--split", default="train", help="split or TFDS slice (default train)")
    parser.add_argument(
        "--data_dir", help="prepared data (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)"
    )
    parser.add_argument("--examples", type=int, default=3, help="examples shown per task")
    parser.add_argument(
        "--sequence_length",
        default="inputs=512,targets=256",
        help="lengths to check truncation against (default inputs=512,targets=256)",
    )
    parser.add_argument(
        "--max_examples", type=int, default=20000, help="examples per task measured for lengths"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def parse_lengths(text: str) -> dict[str, int]:
    """`inputs=512,targets=256` -> {"inputs": 512, "targets": 256}."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("inputs", "targets") or not value.strip().isdigit():
            raise UserError(f"--sequence_length {text!r}: expected inputs=N,targets=M")
        out[key.strip()] = int(value)
    if set(out) != {"inputs", "targets"}:
        raise UserError(f"--sequence_length {text!r}: expected inputs=N,targets=M")
    return out


def run(args: argparse.Namespace) -> int:
    lengths = parse_lengths(args.sequence_length)
    import dsbs_jax.tasks  # noqa: F401 - registers the tasks
    from dsbs_jax.data import inspection

    result = inspection.inspect_tasks(
        args.name,
        args.split,
        data_dir=args.data_dir,
        examples=args.examples,
        sequence_length=lengths,
        max_examples=args.max_examples,
    )
    print(json.dumps(result) if args.json else inspection.format_report(result))
    return 0
