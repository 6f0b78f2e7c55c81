"""`train/slice_fit`: the figures and the advice of `dsbs compile`, from Python (no compile)."""

import json

from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import aot, partitioning, slice_fit

GiB = 2**30


def _report(total_gib: float, temp_gib: float, **kw) -> aot.CompileReport:
    """A report of a step on 4 v5e devices (16 GiB each), batch 64 over data 4 x model 1."""
    fields = dict(
        topology="v5e:2x2", device_kind="TPU v5 lite", devices=4, mesh={"data": 4, "model": 1},
        state_bytes=int(2 * GiB), argument_bytes=int((total_gib - temp_gib) * GiB),
        temp_bytes=int(temp_gib * GiB), output_bytes=0, alias_bytes=0, code_bytes=0,
        hbm_bytes=16 * GiB, flops=1e12, collectives={"all-reduce": {"count": 3, "bytes": 2**20}},
        compile_seconds=2.0, attention_logits="float32", remat_policy="none", kernels="plain",
        batch_size=64, lengths=(512, 128),
    )  # fmt: skip
    return aot.CompileReport(**(fields | kw))


CONFIG = T5Config(vocab_size=256, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                  num_encoder_layers=2, num_decoder_layers=3)  # fmt: skip


def test_rules_kind_names_the_partitioning_rule_sets():
    assert slice_fit.rules_kind(partitioning.STANDARD_RULES) == "standard"
    assert slice_fit.rules_kind(partitioning.FSDP_RULES) == "fsdp"
    assert slice_fit.rules_kind(partitioning.STANDARD_RULES[:2]) == "custom"


def test_a_step_that_fits_has_no_advice_and_says_its_figures():
    fit = slice_fit.SliceFit(_report(total_gib=8, temp_gib=4), CONFIG, "standard")
    assert fit.advice() is None
    text = fit.text()
    assert "d_model 64, 2+3 layers, mlp 128, vocab 256" in text
    assert "mesh data 4 x model 1, standard rules; batch 64 (16 per data shard)" in text
    assert "8.00 GiB of 16.00 GiB (50%): fits" in text
    assert "all-reduce 3 (1.0 MiB)" in text
    figures = fit.as_dict()
    assert figures["rules"] == "standard" and figures["fits"] and json.dumps(figures)


def test_advice_scales_the_batch_to_the_room_left_and_names_what_else_helps():
    # 12 GiB of temporaries, 8 GiB of arguments: 4 GiB over; 8 GiB of room for temporaries
    # gives 16 * 8 / 12 = 10 examples per device.
    fit = slice_fit.SliceFit(_report(total_gib=20, temp_gib=12), CONFIG, "standard")
    line = fit.advice()
    assert line.startswith("the step needs 20.00 GiB per device, 4.00 GiB (25%) more than the ")
    assert "16.00 GiB of a TPU v5 lite device" in line
    assert "a per-device batch of about 10 (BATCH_SIZE 40)" in line
    assert "REMAT_POLICY" in line and "meshes/fsdp.gin" in line and "NUM_PARTITIONS=4" in line
    assert "\n" not in line
    # Already fsdp, full remat and model-parallel: only the batch is left to change.
    fsdp = slice_fit.SliceFit(
        _report(total_gib=20, temp_gib=12, remat_policy="full", mesh={"data": 4, "model": 2}),
        CONFIG, "fsdp",
    )  # fmt: skip
    assert fsdp.advice().endswith("try a per-device batch of about 10 (BATCH_SIZE 40)")


def test_a_refused_step_is_one_line_from_its_temporaries():
    e = aot.DoesNotFit(40 * GiB, 16 * GiB, "too large")
    line = slice_fit.refused(e, CONFIG, 64, {"data": 4, "model": 1}, "TPU v5 lite", "standard")
    assert line.startswith("the step needs 40.00 GiB of temporaries per device, 24.00 GiB (2.5x)")
    assert "a per-device batch of about 6 (BATCH_SIZE 24)" in line
    unknown = aot.DoesNotFit(None, None, "Ran out of memory")
    line = slice_fit.refused(unknown, CONFIG, 64, {"data": 4, "model": 1}, "TPU v4", "fsdp")
    assert line.startswith("the step does not fit a TPU v4 device (Ran out of memory); try ")
    assert "per-device batch" not in line
