"""`dsbs train`: the native trainer, configured by gin files and --gin.NAME=value as in T5X."""

from __future__ import annotations

from dsbs_jax.commands import _gin_command

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    from dsbs_jax.train import multihost

    multihost.add_arguments(parser)


def run(args) -> int:
    from dsbs_jax.train import multihost

    multihost.initialize_from_args(args)
    from dsbs_jax.train import trainer

    kwargs = _gin_command.setup(args)
    result = trainer.train(**kwargs)
    summary = {**result.eval_metrics, **result.test_metrics}
    print(f"finished at step {result.step}; model dir {result.model_dir}")
    for k, v in sorted(summary.items()):
        print(f"  {k}: {v:.2f}")
    return 0
