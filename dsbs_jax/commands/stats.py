"""`dsbs stats TASK --source_dir DIR [--json]`: per released split, count, parse failures and
teacher label accuracy against gold (percent, the card's metric; unparsed outputs count wrong)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task", help="dataset card name (cqa, svamp, esnli, anli, ...) or a YAML path"
    )
    parser.add_argument("--source_dir", required=True, help="the released layout of this dataset")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def split_stats(card, records) -> dict:
    """{"n", "parse_failures", "teacher_accuracy"} of one split's records."""
    from dsbs_jax.metrics import accuracy

    return {
        "n": len(records),
        "parse_failures": sum(not r.ok for r in records),
        "teacher_accuracy": round(
            accuracy(
                [r.gold_label or "" for r in records],
                [r.teacher_label or "" for r in records],
                card.metric,
            ),
            2,
        ),
    }


def run(args: argparse.Namespace) -> int:
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.sources import read_released, released_splits
    from dsbs_jax.errors import UserError

    card = load_card(args.task)
    splits = released_splits(card, args.source_dir)
    if not splits:
        raise UserError(
            f"{args.source_dir}: none of the {card.name} gold files "
            f"({', '.join(card.gold_files.values())})"
        )
    out = {s: split_stats(card, read_released(card, args.source_dir, s)) for s in splits}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{card.name} ({card.metric}) from {args.source_dir}")
    print(f"{'split':<8} {'n':>7} {'parse failures':>15} {'teacher accuracy':>17}")
    for s, st in out.items():
        print(f"{s:<8} {st['n']:>7} {st['parse_failures']:>15} {st['teacher_accuracy']:>16.2f}%")
    return 0
