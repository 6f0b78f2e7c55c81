"""What `dsbs train`, `dsbs eval` and `dsbs predict` share: gin files, bindings, the data dir."""

from __future__ import annotations

from dsbs_jax.errors import UserError
from dsbs_jax.train import gin_utils


def setup(args, check_required: bool = True) -> dict[str, str]:
    """Parses the gin files and --gin.NAME=value bindings; returns the keyword arguments that
    the command passes on to the gin-configured function (the data dir, when given).
    `check_required`: an unset %gin.REQUIRED macro is an error (one line naming it)."""
    bindings, rest = gin_utils.split_gin_args(args.gin_bindings)
    if rest:
        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    paths = [p for p in args.gin_search_paths.split(",") if p]
    gin_utils.parse_gin(args.gin_file, bindings, paths, check_required)
    return {"data_dir": args.tfds_data_dir} if args.tfds_data_dir else {}
