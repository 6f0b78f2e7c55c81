"""`dsbs stats TASK --source_dir DIR [--json]`: per released split, count, parse failures and
teacher label accuracy against gold (percent, the card's metric; unparsed outputs count wrong;
gold labels the metric cannot read are left out, and a line on stderr says how many)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task", help="dataset card name (cqa, svamp, esnli, anli, ...) or a YAML path"
    )
    parser.add_argument("--source_dir", required=True, help="the released layout of this dataset")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def split_stats(card, records) -> tuple[dict, str | None]:
    """({"n", "parse_failures", "teacher_accuracy"}, the line about unreadable gold or None)."""
    from dsbs_jax.metrics import score_teacher

    score = score_teacher(((r.teacher_label, r.gold_label) for r in records), card.metric)
    stats = {
        "n": len(records),
        "parse_failures": sum(not r.ok for r in records),
        "teacher_accuracy": round(score.accuracy or 0.0, 2),
    }
    return stats, score.unreadable_line(f"{card.name}")


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
    out, notes = {}, []
    for split in splits:
        out[split], note = split_stats(card, read_released(card, args.source_dir, split))
        if note:
            notes.append(note.replace(f"{card.name}:", f"{card.name} {split}:", 1))
    for note in notes:  # on stderr, so that --json stays one JSON object
        print(f"dsbs stats: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{card.name} ({card.metric}) from {args.source_dir}")
    print(f"{'split':<8} {'n':>7} {'parse failures':>15} {'teacher accuracy':>17}")
    for s, st in out.items():
        print(f"{s:<8} {st['n']:>7} {st['parse_failures']:>15} {st['teacher_accuracy']:>16.2f}%")
    return 0
