"""`dsbs train`: the native trainer, configured by gin files and --gin.NAME=value as in T5X."""

from __future__ import annotations

from dsbs_jax.commands import _gin_command

ACCEPTS_GIN_BINDINGS = True


def add_arguments(parser) -> None:
    _gin_command.add_gin_arguments(parser)
    group = parser.add_argument_group("multi-host (one process per host)")
    group.add_argument(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() first (coordinator from the flags below, "
        "DSBS_COORDINATOR/DSBS_NUM_PROCESSES/DSBS_PROCESS_ID, SLURM, or a TPU VM)",
    )
    group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num_processes", type=int, default=None, help="processes in the job")
    group.add_argument("--process_id", type=int, default=None, help="this process's index")


def run(args) -> int:
    from dsbs_jax.train import multihost, trainer

    # jax.distributed.initialize() when --multihost or any coordinator flag was given.
    flags = (args.coordinator_address, args.num_processes, args.process_id)
    if args.multihost or any(f is not None for f in flags):
        multihost.initialize(*flags)

    kwargs = _gin_command.setup(args)
    result = trainer.train(**kwargs)
    summary = {**result.eval_metrics, **result.test_metrics}
    print(f"finished at step {result.step}; model dir {result.model_dir}")
    for k, v in sorted(summary.items()):
        print(f"  {k}: {v:.2f}")
    return 0
