"""`dsbs compile`: the train step compiled for TPU slices on this CPU host (libtpu, no TPU).

Small models, so each compile takes seconds; the large figures are in docs/scaling.md.
"""

import json
import os

import pytest

pytest.importorskip("libtpu", reason="TPU compiles need the tpu extra (pip install '.[tpu]')")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # a pytest-xdist sibling may hold it

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dsbs_jax import cli, errors  # noqa: E402
from dsbs_jax.commands import _gin_command  # noqa: E402
from dsbs_jax.model import t5  # noqa: E402
from dsbs_jax.train import aot, gin_utils, losses, optimizers, partitioning, slice_fit  # noqa: E402
from dsbs_jax.train import plan as plan_lib  # noqa: E402

# Heads, mlp and vocabulary divide by the 'model' axis (4) of the model-parallel mesh gins.
SMALL = [
    "--gin.VOCAB_SIZE=256", "--gin.t5.T5Config.emb_dim=64", "--gin.t5.T5Config.num_heads=4",
    "--gin.t5.T5Config.head_dim=16", "--gin.t5.T5Config.mlp_dim=128",
    "--gin.t5.T5Config.num_encoder_layers=2", "--gin.t5.T5Config.num_decoder_layers=2",
    "--gin.ACTIVATION_DTYPE='bfloat16'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}",
    "--gin.MIXTURE_OR_TASK_NAME='svamp_dsbs'", "--gin.TRAIN_STEPS=100",
]  # fmt: skip

# mesh gin -> (devices of its slice, 'model' axis size)
MESH_GINS = {
    "meshes/tpu_v4_8.gin": (4, 1),
    "meshes/tpu_v5e_16.gin": (16, 1),
    "meshes/tpu_v5e_256.gin": (256, 4),
    "meshes/tpu_v5p_128.gin": (64, 4),
}


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _compile(capsys, *args) -> tuple[int, dict | None, str]:
    rc = cli.main(["compile", "--json", "--gin_file=models/t5_1_1_tiny.gin",
                   "--gin_file=runs/dsbs.gin", *SMALL, *args])  # fmt: skip
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if lines else None), out.err


@pytest.mark.parametrize("mesh_gin", sorted(MESH_GINS))
def test_each_mesh_gin_compiles_for_its_slice_and_fits(capsys, mesh_gin):
    devices, model = MESH_GINS[mesh_gin]
    rc, report, err = _compile(capsys, f"--gin_file={mesh_gin}", f"--gin.BATCH_SIZE={devices}")
    assert rc == 0, err
    assert report["devices"] == devices and report["mesh"]["model"] == model
    assert report["topology"] == partitioning.tpu_topology()
    assert report["fits"] and 0 < report["total_bytes"] < report["hbm_bytes"]
    assert report["collectives"]["all-to-all"]["count"] == 0
    assert report["kernels"] == "plain"  # TPU runs the plain network, whatever the host
    assert report["flops"] > 0


def test_a_step_that_does_not_fit_exits_2_with_one_line(capsys):
    rc, report, err = _compile(
        capsys, "--topology=v5e:2x2", "--gin.BATCH_SIZE=4096",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 2048, 'targets': 512}",
    )  # fmt: skip
    assert rc == 2 and report is None
    message = [line for line in err.splitlines() if line.startswith("dsbs compile: error:")]
    assert len(message) == 1
    assert " more than the " in message[0] and "TPU v5 lite" in message[0]
    assert "per-device batch of about" in message[0] and "REMAT_POLICY" in message[0]


def test_compile_for_slice_from_python():
    """What `dsbs compile` calls, called from Python under a parsed gin config."""
    bindings, _ = _gin_command.split_gin_args(SMALL)
    gin_utils.parse_gin(["models/t5_1_1_tiny.gin", "runs/dsbs.gin"], bindings, (), False)
    fit = slice_fit.compile_for_slice("v5e:2x2")
    assert fit.report.devices == 4 and fit.report.topology == "v5e:2x2"
    assert fit.rules == "standard" and fit.model_config.emb_dim == 64
    assert fit.advice() is None and fit.as_dict()["rules"] == "standard"
    assert "v5e:2x2, 4 x TPU v5 lite" in fit.text()
    gin_utils.parse_gin(["models/t5_1_1_tiny.gin", "runs/dsbs.gin"], bindings, (), False)
    with pytest.raises(errors.UserError, match="no --topology given"):
        slice_fit.compile_for_slice(None)


def test_unknown_topology_is_one_line(capsys):
    rc, _, err = _compile(capsys, "--topology=v5e")
    assert rc == 2 and "--topology 'v5e'" in err


def test_what_the_step_depends_on_must_be_set_as_for_a_run(capsys):
    rc, _, err = _compile(capsys, "--topology=v5e:2x2", "--gin.TRAIN_STEPS=%gin.REQUIRED")
    assert rc == 2 and "TRAIN_STEPS is not set" in err and len(err.strip().splitlines()) == 1


def _reference_all_gathers(cfg, mesh, rules, batch_size, lengths) -> dict:
    """The plain-autodiff reference: value_and_grad of the flax network's mean token loss, no
    dropout and no optimizer, with the same parameter layout."""
    import flax.linen as nn

    model = t5.Transformer(t5.resolve_kernels(cfg, "tpu"))
    with mesh, nn.logical_axis_rules(rules):
        _, shardings, abstract = partitioning.param_layout(model, lengths, mesh, rules)

        def loss(p, batch):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                logits = model.apply({"params": p}, **batch, enable_dropout=False)
            return losses.token_losses(logits, batch["decoder_target_tokens"], 0.0, True).mean()

        keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
        full = aot.abstract_batch(batch_size, *lengths, partitioning.data_sharding(mesh))
        batch = {k: full[k] for k in keys}
        fn = jax.jit(jax.value_and_grad(loss), out_shardings=(None, shardings))
        return aot.collectives(fn.lower(abstract, batch).compile().as_text())


def test_model_parallel_step_gathers_no_more_than_plain_autodiff():
    import optax

    cfg = t5.T5Config(vocab_size=256, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                      num_encoder_layers=2, num_decoder_layers=2, dtype="bfloat16")  # fmt: skip
    mesh = aot.slice_mesh("v5e:2x2", 2)
    rules = partitioning.STANDARD_RULES
    schedule = optax.constant_schedule(1e-3)
    plan = plan_lib.StepPlan(cfg, optimizers.make_optimizer(schedule), schedule, 2, "exact", 1e-4,
                             8, (32, 16))  # fmt: skip
    ours = aot.compile_plan(plan, mesh, rules, "v5e:2x2")
    reference = _reference_all_gathers(cfg, mesh, rules, 8, (32, 16))
    assert ours.mesh == {"data": 2, "model": 2}
    assert ours.collectives["all-to-all"]["count"] == 0
    assert ours.collectives["all-gather"]["count"] <= reference["all-gather"]["count"]


def test_collectives_count_channels_and_result_bytes():
    hlo = "\n".join([
        "  %ag.1 = bf16[8,32]{1,0} all-gather(%p), channel_id=7, dimensions={1}",
        "  %ag.2 = bf16[8,32]{1,0} all-gather(%q), channel_id=7, dimensions={1}",
        "  %ars = (f32[4]{0}, f32[16]{0}) all-reduce-start(%a, %b), channel_id=9",
        "  %ard = (f32[4]{0}, f32[16]{0}) all-reduce-done(%ars)",
        "  %ags = (bf16[2,4]{1,0}, bf16[8,4]{1,0}) all-gather-start(%c), channel_id=11",
    ])  # fmt: skip
    c = aot.collectives(hlo)
    assert c["all-gather"] == {"count": 2, "bytes": 8 * 32 * 2 + 8 * 4 * 2}
    assert c["all-reduce"] == {"count": 1, "bytes": (4 + 16) * 4}
    assert c["all-to-all"]["count"] == 0 and jnp.dtype("bfloat16").itemsize == 2
