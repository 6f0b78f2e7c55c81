"""What the gin-configured commands (train, eval, predict, compile, export) share: gin files,
bindings, the data dir."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dsbs_jax.errors import UserError
from dsbs_jax.train import gin_utils


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `--gin.NAME=value` (and `--gin.NAME value`) out of argv into gin bindings."""
    bindings, rest = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin."):
            body = arg[len("--gin.") :]
            if "=" not in body:
                value = next(it, None)
                if value is None:
                    raise UserError(f"{arg}: expected --gin.NAME=value")
                body = f"{body}={value}"
            name, value = body.split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return bindings, rest


def gin_bindings(args) -> list[str]:
    """The command's --gin.NAME=value bindings as gin lines; anything else left over is an error."""
    bindings, rest = split_gin_args(args.gin_bindings)
    if rest:
        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    return bindings


def setup(args, check_required: bool = True) -> dict[str, str]:
    """Parses the gin files and --gin.NAME=value bindings; returns the keyword arguments that
    the command passes on to the gin-configured function (the data dir, when given).
    `check_required`: an unset %gin.REQUIRED macro is an error (one line naming it)."""
    files, bindings, paths = gin_args(args)
    gin_utils.parse_gin(files, bindings, paths, check_required)
    return {"data_dir": args.tfds_data_dir} if args.tfds_data_dir else {}


def gin_args(args) -> tuple[list[str], list[str], list[str]]:
    """(the --gin_file files, the --gin.NAME=value bindings, the --gin_search_paths folders);
    any other argument left over is an error."""
    paths = [p for p in args.gin_search_paths.split(",") if p]
    return list(args.gin_file), gin_bindings(args), paths


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    """--gin_file, --gin_search_paths and --tfds_data_dir, as T5X names them."""
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument(
        "--gin_search_paths", default="", help="comma-separated folders to look for gin files in"
    )
    parser.add_argument(
        "--tfds_data_dir",
        default=None,
        help="prepared data (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)",
    )
    parser.epilog = "gin bindings: --gin.NAME=value (as in T5X), e.g. --gin.TRAIN_STEPS=1000"
