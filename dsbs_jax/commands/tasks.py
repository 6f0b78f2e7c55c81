"""`dsbs tasks [--json]`: the registered SeqIO tasks and mixtures (with rates)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--all", action="store_true", help="also list non-dsbs registrations")


def run(args: argparse.Namespace) -> int:
    import seqio

    import dsbs_jax.tasks

    ours = {n for names in dsbs_jax.tasks.REGISTERED.values() for n in names}
    keep = (lambda n: True) if args.all else (lambda n: n in ours)
    tasks = sorted(n for n in seqio.TaskRegistry.names() if keep(n))
    mixtures = {}
    for name in sorted(n for n in seqio.MixtureRegistry.names() if keep(n)):
        m = seqio.get_mixture_or_task(name)
        mixtures[name] = {t.name: round(m.get_rate(t), 6) for t in m.tasks}
    if args.json:
        print(json.dumps({"tasks": tasks, "mixtures": mixtures}))
        return 0
    print(f"tasks ({len(tasks)}):")
    for t in tasks:
        print(f"  {t}")
    print(f"mixtures ({len(mixtures)}):")
    for name, rates in mixtures.items():
        print(f"  {name:<22} " + ", ".join(f"{t} {r:g}" for t, r in rates.items()))
    return 0
