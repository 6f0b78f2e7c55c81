"""`train/export`: what `dsbs export` calls, from Python (no `transformers` needed)."""

from __future__ import annotations

import json

import gin
import jax
import numpy as np
import pytest
from random_params import random_params

from dsbs_jax.errors import UserError
from dsbs_jax.interop import t5x
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.train import checkpoints, export, gin_utils

# t5_1_1_tiny.gin's sizes, with a vocabulary of 96 that only the checkpoint knows.
TINY = dict(emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=2, num_decoder_layers=2,
            mlp_dim=64, dropout_rate=0.0)  # fmt: skip


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _run(tmp_path, config_gin: str | None, step: int = 5):
    """A MODEL_DIR holding checkpoint_<step> of a tiny untied model (and a config.gin)."""
    params = random_params(T5Config(vocab_size=96, **TINY), seed=3)
    model_dir = tmp_path / "run"
    ckpt = checkpoints.Checkpointer(str(model_dir), every_steps=1)
    ckpt.save(step, params, {"count": np.zeros((), np.int32)}, {"step": step})
    ckpt.close()
    if config_gin is not None:
        (model_dir / "config.gin").write_text(config_gin)
    return model_dir, params


def test_config_from_shapes_reads_the_vocabulary_and_the_tying():
    base = T5Config(vocab_size=1, **TINY)
    untied = random_params(T5Config(vocab_size=96, **TINY))
    tied = random_params(T5Config(vocab_size=64, logits_via_embedding=True, **TINY))
    got = export.config_from_shapes(base, untied)
    assert (got.vocab_size, got.logits_via_embedding, got.emb_dim) == (96, False, 32)
    got = export.config_from_shapes(base, tied)
    assert (got.vocab_size, got.logits_via_embedding) == (64, True)
    with pytest.raises(UserError, match="no token_embedder/embedding"):
        export.config_from_shapes(base, {"encoder": {}}, "ckpt")


def test_export_a_run_to_t5x_with_its_own_config_gin(tmp_path):
    model_dir, params = _run(tmp_path, "include 'models/t5_1_1_tiny.gin'\nDROPOUT_RATE = 0.0\n")
    assert export.native_params_dir(model_dir).endswith("checkpoint_5/params")
    result = export.export(model_dir, tmp_path / "t5x", format="t5x")
    assert (result.format, result.source_kind, result.vocab_size) == ("t5x", "native", 96)
    assert result.path.endswith("checkpoint_5")  # the source's step
    jax.tree.map(np.testing.assert_array_equal, t5x.load_t5x(tmp_path / "t5x"), params)
    # ... and back: a T5X source needs the model's gin file, which gives the sizes.
    with pytest.raises(UserError, match="a T5X checkpoint needs the model's gin file"):
        export.export(tmp_path / "t5x", tmp_path / "again", format="t5x")
    again = export.export(tmp_path / "t5x", tmp_path / "again", format="t5x", step=9,
                          gin_files=["models/t5_1_1_tiny.gin"])  # fmt: skip
    assert again.source_kind == "t5x" and again.path.endswith("checkpoint_9")


def test_export_to_hf_copies_the_vocabulary_its_config_gin_names(tmp_path):
    spm = tmp_path / "spm.model"
    spm.write_bytes(b"not read, only copied")
    config_gin = (
        "include 'models/t5_1_1_tiny.gin'\n"
        f"VOCABULARY_PATH = '{spm}'\nMIXTURE_OR_TASK_NAME = 'no_such_task'\n"
    )
    model_dir, _ = _run(tmp_path, config_gin)
    # --gin_file given: the run's config.gin is read through gin for its VOCABULARY_PATH only.
    result = export.export(model_dir, tmp_path / "hf", gin_files=["models/t5_1_1_tiny.gin"],
                           gin_bindings=["DROPOUT_RATE = 0.0"])  # fmt: skip
    assert (result.format, result.vocabulary) == ("hf", str(spm))
    assert (tmp_path / "hf" / "spiece.model").read_bytes() == spm.read_bytes()
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["vocab_size"] == 96 and hf_config["d_model"] == 32
    with pytest.raises(UserError, match="is a file, expected a directory"):
        export.export(model_dir, spm)


def test_the_vocabulary_chain_takes_the_first_source_that_names_one(tmp_path):
    given, env, own = (tmp_path / n for n in ("given.model", "env.model", "own.model"))
    for p in (given, env, own):
        p.write_bytes(b"x")
    model_dir, _ = _run(tmp_path, f"VOCABULARY_PATH = '{own}'\n")
    native = export.native_params_dir(model_dir)
    environ = {export.VOCAB_ENV: str(env)}
    chain = export.find_vocabulary
    assert chain(given, "gin.model", native, environ=environ) == str(given)
    assert chain(None, "gin.model", native, environ=environ) == "gin.model"
    assert chain(None, None, native, environ=environ) == str(env)
    assert chain(None, None, native, environ={}) == str(own)
    assert chain(None, None, None, environ={}) is None
    with pytest.raises(UserError, match="no such sentencepiece model"):
        chain(tmp_path / "missing.model", "gin.model", native, environ=environ)
    # A run whose config.gin names an unknown task (and no VOCABULARY_PATH) gives none.
    (model_dir / "config.gin").write_text("MIXTURE_OR_TASK_NAME = 'no_such_task'\n")
    assert export.run_vocabulary(native) is None


def test_file_macros_reads_a_config_gin_without_binding_it(tmp_path):
    path = tmp_path / "config.gin"
    path.write_text(
        "import dsbs_jax.model.t5\n# Macros:\nVOCABULARY_PATH = None\n"
        "MIXTURE_OR_TASK_NAME = 'svamp_dsbs'\nTASK_FEATURE_LENGTHS = {'inputs': 8}\n"
        "T5Config.dropout_rate = %DROPOUT_RATE\nscope/OTHER = 1\n"
    )
    macros = gin_utils.file_macros(path)
    assert macros == {"VOCABULARY_PATH": None, "MIXTURE_OR_TASK_NAME": "svamp_dsbs",
                      "TASK_FEATURE_LENGTHS": {"inputs": 8}}  # fmt: skip
    with pytest.raises(ValueError):
        gin.query_parameter("%MIXTURE_OR_TASK_NAME")  # nothing was bound
    path.write_text("NAME = 'unclosed\n")
    assert gin_utils.file_macros(path) == {}
