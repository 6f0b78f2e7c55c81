"""What `dsbs train`, `dsbs eval` and `dsbs predict` share: gin files, bindings, the data dir."""

from __future__ import annotations

import os

from dsbs_jax.train import gin_utils


def setup(args) -> None:
    """Points seqio at the data dir, then parses the gin files and --gin.NAME=value bindings."""
    if args.tfds_data_dir:
        os.environ["DSBS_DATA_DIR"] = args.tfds_data_dir
        import seqio

        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    bindings, rest = gin_utils.split_gin_args(args.gin_bindings)
    if rest:
        from dsbs_jax.errors import UserError

        raise UserError(f"unrecognized arguments: {' '.join(rest)}")
    paths = [p for p in args.gin_search_paths.split(",") if p]
    gin_utils.parse_gin(args.gin_file, bindings, paths)
