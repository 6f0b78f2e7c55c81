"""`dsbs prepare TASK --source_dir DIR --data_dir OUT [--records SPLIT=FILE.jsonl ...]`."""

from __future__ import annotations

import argparse

from dsbs_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task", help="dataset card name (cqa, svamp, esnli, anli, ...) or a YAML path"
    )
    parser.add_argument("--source_dir", help="the released layout (gold files + llm/*_CoT_*.json)")
    parser.add_argument(
        "--data_dir",
        help="where to write the TFDS dataset (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)",
    )
    parser.add_argument(
        "--records",
        action="append",
        default=[],
        metavar="SPLIT=FILE.jsonl",
        help="records written by `dsbs teach` for one split (train, valid/validation, test); "
        "repeat per split; they take the place of that split of --source_dir",
    )


SPLIT_NAMES = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}


def parse_records_flags(values: list[str]) -> dict[str, str]:
    """`train=a.jsonl` flags -> {"train": "a.jsonl"}; `valid=` and `validation=` both give
    "validation"."""
    out = {}
    for v in values:
        split, sep, path = v.partition("=")
        if not sep or not split or not path:
            raise UserError(f"--records {v!r}: expected SPLIT=FILE.jsonl")
        name = SPLIT_NAMES.get(split.strip())
        if name is None:
            raise UserError(
                f"--records {v!r}: unknown split {split!r} (train, valid or validation, test)"
            )
        if name in out:
            raise UserError(f"--records {v!r}: a second file for the {name} split")
        out[name] = path
    return out


def run(args: argparse.Namespace) -> int:
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.paths import DATA_DIR_ENV, TFDS_DATA_DIR_ENV, env_data_dir
    from dsbs_jax.data.prepare import prepare

    data_dir = args.data_dir or env_data_dir()
    if not data_dir:
        raise UserError(
            f"no data dir: pass --data_dir or set {DATA_DIR_ENV} (or {TFDS_DATA_DIR_ENV})"
        )
    records = parse_records_flags(args.records)
    if args.source_dir is None and not records:
        raise UserError("nothing to read: pass --source_dir and/or --records SPLIT=FILE.jsonl")
    card = load_card(args.task)
    counts = prepare(card, args.source_dir, data_dir, records, log=lambda s: print(s, flush=True))
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0
