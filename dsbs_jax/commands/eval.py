"""`dsbs eval`: score a checkpoint on a split with the task metrics (gin: runs/eval.gin)."""

from __future__ import annotations

import json

from dsbs_jax.commands import _gin_command

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from dsbs_jax.train import inference

    kwargs = _gin_command.setup(args)
    metrics = inference.evaluate_checkpoint(**kwargs)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in sorted(metrics.items()):
            print(f"{k}: {v:.2f}")
    return 0
