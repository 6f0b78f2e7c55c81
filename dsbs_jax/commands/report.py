"""`dsbs report OUT`: rebuild a sweep's table and plots from its finished runs."""

from __future__ import annotations

import argparse
import os

from dsbs_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="a sweep's folder (holds results.jsonl)")


def run(args: argparse.Namespace) -> int:
    from dsbs_jax.report.report import write_report

    if not os.path.isdir(args.out):
        raise UserError(f"{args.out}: no such directory")
    paths = write_report(args.out)
    print(open(paths["table"], encoding="utf-8").read())
    for name in ("report", "plot"):
        if name in paths:
            print(f"{name}: {paths[name]}")
    return 0
