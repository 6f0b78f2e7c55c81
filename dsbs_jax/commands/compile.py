"""`dsbs compile`: the train step `dsbs train` would run with the same gin, compiled for a TPU
slice on this host (no TPU needed; libtpu is the `tpu` extra), with its per-device memory,
FLOPs and collectives. Exits 2 with one line when it would not fit the slice's HBM.

The work is `dsbs_jax.train.slice_fit.compile_for_slice`."""

from __future__ import annotations

import json
import os

from dsbs_jax.commands import _gin_command
from dsbs_jax.errors import UserError

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    parser.add_argument(
        "--topology",
        default=None,
        help="TPU slice, e.g. v5e:4x4 or v5p:4x4x4 (default: TOPOLOGY of the mesh gin)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def run(args) -> int:
    # A host without a TPU: JAX's default backend stays the CPU (libtpu would otherwise look for
    # a TPU at start-up and warn); the slice's devices come from libtpu's topology description.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    data = _gin_command.setup(args, check_required=False)  # MODEL_DIR and the like: not needed
    from dsbs_jax.train import slice_fit

    fit = slice_fit.compile_for_slice(args.topology, data.get("data_dir"))
    print(json.dumps(fit.as_dict(), sort_keys=True) if args.json else fit.text())
    advice = fit.advice()
    if advice:
        raise UserError(advice)
    return 0
