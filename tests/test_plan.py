"""`dsbs compile` plans the program `dsbs train` runs: one function (`aot.plan_from_gin`, over
`trainer.settings_from_gin` and `plan.plan_step`) resolves both from the same gin."""

from __future__ import annotations

import gin
import pytest

import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
from dsbs_jax import cli
from dsbs_jax.train import aot, gin_utils, partitioning
from dsbs_jax.train import plan as plan_lib

GIN = ["models/micro.gin", "runs/dsbs.gin"]
RUN = [
    "MIXTURE_OR_TASK_NAME = 'toy_reverse'",
    "TASK_FEATURE_LENGTHS = {'inputs': 24, 'targets': 12}",
    "TRAIN_STEPS = 2",
    "BATCH_SIZE = 8",
    "EVAL_PERIOD = 0",
    "train.test_split = None",
    "train.log_every = 1",
    "train.checkpoint_period = 2",
    "train.check_lengths = False",
]


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _trained_step_text(tmp_path, monkeypatch, bindings: list[str]) -> str:
    """The StableHLO of the step `dsbs train` ran (the programs it built, lowered again)."""
    built = []
    real = plan_lib.build_step

    def record(plan, mesh, rules, cache=None):
        programs = real(plan, mesh, rules, cache)
        built.append((programs, plan, mesh, rules))
        return programs

    monkeypatch.setattr(plan_lib, "build_step", record)
    args = ["train", *(f"--gin_file={g}" for g in GIN)]
    args += [f"--gin.{b.replace(' = ', '=')}" for b in [*RUN, *bindings]]
    args.append(f"--gin.MODEL_DIR='{tmp_path / 'run'}'")
    assert cli.main(args) == 0
    (programs, plan, mesh, rules) = built[-1]
    with mesh:
        return aot.lower_step(programs, mesh, plan.batch_size, *plan.lengths).as_text()


def _planned_step_text(bindings: list[str]) -> str:
    """The StableHLO `dsbs compile`'s plan lowers, here on the CPU mesh train used."""
    gin_utils.parse_gin(GIN, [*RUN, *bindings], check_required=False)
    plan = aot.plan_from_gin()
    _, lowered = aot.lower_plan(plan, partitioning.make_mesh(), partitioning.logical_axis_rules())
    return lowered.as_text()


CHANGES = {  # each changes the program, and the plan must follow it
    "z_loss": "train.z_loss = 0.01",
    "batch": "BATCH_SIZE = 16",
    "weighting": "LOSS_WEIGHTING = 'sampling'",
    "optimizer": "make_optimizer.name = 'adamw'",
}


def test_compile_lowers_the_step_train_runs(tmp_path, monkeypatch):
    """With every binding above changed on the command line (each one alone changes the step,
    below), the program compile plans is the one train ran."""
    bindings = sorted(CHANGES.values())
    assert _planned_step_text(bindings) == _trained_step_text(tmp_path, monkeypatch, bindings)


def test_each_changed_binding_changes_the_planned_step():
    default = _planned_step_text([])
    for name, binding in CHANGES.items():
        assert _planned_step_text([binding]) != default, name
