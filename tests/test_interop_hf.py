"""Hugging Face T5 to and from our tree: logits and greedy decodes agree with `transformers`."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from dsbs_jax.data.text import EOS_ID
from dsbs_jax.errors import UserError
from dsbs_jax.interop import hf, safetensors_io
from dsbs_jax.model.decode import greedy_decode
from dsbs_jax.model.t5 import T5Config, Transformer
from dsbs_jax.train import checkpoints, partitioning

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 128

# T5 v1.1 layout: gated GELU, untied lm_head, heads * d_kv == d_model.
V1_1 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False)  # fmt: skip
# Flan-T5-like: as flan-t5-small, heads * d_kv != d_model, and here unequal stack depths.
FLAN = dict(d_model=32, d_kv=8, d_ff=48, num_layers=3, num_decoder_layers=2, num_heads=6,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # fmt: skip
# Original T5: ReLU, lm_head tied to the embedding, decoder output scaled by d_model**-0.5.
ORIGINAL = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="relu",
                tie_word_embeddings=True)  # fmt: skip


def _hf_model(kw, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=VOCAB, decoder_start_token_id=0, dropout_rate=0.0, **kw)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not kw["tie_word_embeddings"]:
        # transformers 5 ties a fresh T5's head to the embedding; v1.1 has its own.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, kw["d_model"]))
    return model


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (3, 13))
    enc[0, 8:] = 0  # padding
    enc[1, 12] = 1
    dec = rng.integers(2, VOCAB, (3, 7))
    dec[:, 0] = 0  # decoder start
    return enc, dec


def _hf_logits(model, enc, dec):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec),
        )
    return out.logits.numpy()


def _our_logits(config, params, enc, dec):
    fn = jax.jit(
        lambda p, e, d: Transformer(config).apply(
            {"params": p}, e, d, jnp.ones_like(d), enable_dropout=False
        )
    )
    return np.asarray(fn(params, jnp.asarray(enc), jnp.asarray(dec)))


def _hf_greedy(model, enc, length):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            do_sample=False,
            num_beams=1,
            max_new_tokens=length,
            min_length=0,
        ).numpy()
    out = out[:, 1:]  # drop the decoder start token
    return np.pad(out, ((0, 0), (0, length - out.shape[1])))


@pytest.mark.parametrize(
    "name,kw,safe", [("v1_1", V1_1, True), ("flan", FLAN, False), ("original", ORIGINAL, True)]
)
def test_hf_to_ours(tmp_path, name, kw, safe):
    model = _hf_model(kw)
    model.save_pretrained(tmp_path)
    if not safe:  # the older PyTorch pickle (transformers 5 writes only safetensors)
        (tmp_path / "model.safetensors").unlink()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    params, config = hf.load_hf(tmp_path)
    assert config == hf.config_from_hf(tmp_path)
    assert config.logits_via_embedding == kw["tie_word_embeddings"]
    assert config.num_decoder_layers == kw.get("num_decoder_layers", kw["num_layers"])
    enc, dec = _inputs()
    diff = np.abs(_our_logits(config, params, enc, dec) - _hf_logits(model, enc, dec)).max()
    assert diff < TOL, f"{name}: HF->ours max |logit diff| {diff}"
    if name == "v1_1":  # greedy decoding is the same code for every layout: one is enough
        ours = np.asarray(greedy_decode(Transformer(config), params, jnp.asarray(enc), 10, EOS_ID))
        np.testing.assert_array_equal(ours, _hf_greedy(model, enc, 10))
        assert (ours > 1).sum() > 10  # the decodes say something


@pytest.mark.parametrize("tied", [False, True])
def test_ours_to_hf(tmp_path, tied):
    config = T5Config(
        vocab_size=VOCAB, emb_dim=32, num_heads=6, head_dim=8, num_encoder_layers=2,
        num_decoder_layers=2, mlp_dim=48, dropout_rate=0.0, logits_via_embedding=tied,
        mlp_activations=("relu",) if tied else ("gelu", "linear"),
    )  # fmt: skip
    params = random_params(config)
    hf.save_hf(params, config, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    enc, dec = _inputs(2)
    diff = np.abs(_our_logits(config, params, enc, dec) - _hf_logits(model, enc, dec)).max()
    assert diff < TOL, f"ours->HF max |logit diff| {diff}"
    if not tied:
        ours = np.asarray(greedy_decode(Transformer(config), params, jnp.asarray(enc), 10, EOS_ID))
        np.testing.assert_array_equal(ours, _hf_greedy(model, enc, 10))


def test_safetensors_round_trip(tmp_path):
    config = hf.config_from_hf({"vocab_size": VOCAB, **V1_1})
    params = random_params(config, seed=3)
    hf.save_hf(params, config, tmp_path / "f32", vocab_path=None)
    back, config2 = hf.load_hf(tmp_path / "f32")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # bfloat16 goes through our own reader (numpy has no bfloat16; ml_dtypes does).
    hf.save_hf(params, config, tmp_path / "bf16", dtype="bfloat16")
    raw = safetensors_io.read(tmp_path / "bf16" / "model.safetensors")
    assert str(raw["shared.weight"].dtype) == "bfloat16"
    back16, _ = hf.load_hf(tmp_path / "bf16")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=1e-2, atol=1e-2),
        back16, params,
    )  # fmt: skip


def test_an_interrupted_export_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """The files go to a folder beside --out and are swapped in at once: a failure (or a kill)
    after the weights were written leaves the previous export as it was, with no temp folder;
    a folder with other files in it is refused, not replaced."""
    config = hf.config_from_hf({"vocab_size": VOCAB, **V1_1})
    out = tmp_path / "export"
    vocab = tmp_path / "spm.model"
    vocab.write_bytes(b"old tokenizer")
    hf.save_hf(random_params(config, seed=1), config, out, vocab_path=vocab)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before["spiece.model"] == b"old tokenizer"

    real_copy = hf.shutil.copyfile

    def killed_while_copying(src, dst):
        real_copy(src, dst)
        raise KeyboardInterrupt  # the weights and config are written, the tokenizer is not

    monkeypatch.setattr(hf.shutil, "copyfile", killed_while_copying)
    with pytest.raises(KeyboardInterrupt):
        hf.save_hf(random_params(config, seed=2), config, out, vocab_path=vocab)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "spm.model"]

    monkeypatch.undo()
    hf.save_hf(random_params(config, seed=2), config, out)  # no vocabulary this time
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["model.safetensors"] != before["model.safetensors"]
    assert "spiece.model" not in after  # the export is replaced whole, not merged

    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"export: holds notes.txt, not a Hugging Face export"):
        hf.save_hf(random_params(config, seed=3), config, out)
    assert (out / "notes.txt").read_text() == "mine"


def _flax_tree(state: dict[str, np.ndarray]) -> dict:
    """A PyTorch-named T5 state dict in HF Flax's layout (kernel [in, out], embedding)."""
    tree: dict = {}
    for name, w in state.items():
        *path, _ = name.split(".")
        is_embedding = path[-1] in ("shared", "relative_attention_bias")
        if is_embedding:
            leaf, value = "embedding", w
        elif path[-1] in ("layer_norm", "final_layer_norm"):
            leaf, value = "weight", w
        else:
            leaf, value = "kernel", w.T
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(value)
    return tree


def test_flax_msgpack(tmp_path):
    from flax import serialization

    model = _hf_model(V1_1, seed=4)
    model.save_pretrained(tmp_path / "pt")
    want, config = hf.load_hf(tmp_path / "pt")
    state = {
        k: v.numpy()
        for k, v in model.state_dict().items()
        if not k.endswith("embed_tokens.weight")  # HF Flax shares `shared`
    }
    (tmp_path / "fx").mkdir()
    (tmp_path / "fx" / "flax_model.msgpack").write_bytes(
        serialization.msgpack_serialize(_flax_tree(state))
    )
    (tmp_path / "fx" / "config.json").write_text((tmp_path / "pt" / "config.json").read_text())
    got, config2 = hf.load_hf(tmp_path / "fx")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, got, want)


def _abstract(config, mesh):
    model = Transformer(config)
    rules = partitioning.logical_axis_rules()
    enc = jnp.ones((1, 8), jnp.int32)
    boxed = jax.eval_shape(
        lambda r: model.init({"params": r}, enc, enc, enc, enable_dropout=False)["params"],
        jax.random.PRNGKey(0),
    )
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    return checkpoints.abstract_with_shardings(nn.meta.unbox(boxed), shardings)


def test_initial_checkpoint_from_hf_dir(tmp_path):
    model = _hf_model(ORIGINAL, seed=5)
    model.save_pretrained(tmp_path)
    mesh = partitioning.make_mesh(num_partitions=2)
    tied_cfg = hf.config_from_hf(tmp_path)
    params = checkpoints.load_params(str(tmp_path), _abstract(tied_cfg, mesh))
    leaf = params["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert leaf.sharding.mesh.shape == mesh.shape and not leaf.sharding.is_fully_replicated
    enc, dec = _inputs(3)
    want = _hf_logits(model, enc, dec)
    assert np.abs(_our_logits(tied_cfg, params, enc, dec) - want).max() < TOL
    # A tied checkpoint also starts an untied student: logits_dense = embedding.T / sqrt(d).
    untied = T5Config(**{**tied_cfg.__dict__, "logits_via_embedding": False})
    params = checkpoints.load_params(str(tmp_path), _abstract(untied, mesh))
    assert np.abs(_our_logits(untied, params, enc, dec) - want).max() < TOL
    # A different model config is a one-line error, not a traceback.
    wrong = T5Config(**{**tied_cfg.__dict__, "num_encoder_layers": 3})
    with pytest.raises(UserError, match="does not match the model config"):
        checkpoints.load_params(str(tmp_path), _abstract(wrong, mesh))
    wrong_vocab = T5Config(**{**tied_cfg.__dict__, "vocab_size": 256})
    with pytest.raises(UserError, match="VOCAB_SIZE"):
        checkpoints.load_params(str(tmp_path), _abstract(wrong_vocab, mesh))


def test_bad_configs(tmp_path):
    with pytest.raises(UserError, match="feed_forward_proj"):
        hf.config_from_hf({"feed_forward_proj": "gelu"})  # exact GELU: not in our network
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json:1"):
        hf.read_hf_config(tmp_path)
    with pytest.raises(UserError, match="not a Hugging Face"):
        hf.load_hf(tmp_path)


@pytest.fixture
def clean_gin():
    import gin

    yield
    gin.clear_config()


def test_dsbs_export_hf(tmp_path, capsys, clean_gin):
    """`dsbs export --format hf` on one of our MODEL_DIRs writes what transformers loads."""
    from dsbs_jax import cli
    from dsbs_jax.data import vocab as vocab_lib

    # t5_1_1_tiny.gin's sizes; the vocabulary size comes from the checkpoint.
    config = T5Config(
        vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=2,
        num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0,
    )  # fmt: skip
    params = random_params(config, seed=7)
    model_dir = tmp_path / "run"
    ckpt = checkpoints.Checkpointer(str(model_dir), every_steps=1)
    ckpt.save(12, params, {"count": np.zeros((), np.int32)}, {"step": 12})
    ckpt.close()
    spm = vocab_lib.train_sentencepiece(
        [f"predict: {a} plus {b} is {a + b}" for a in range(40) for b in range(5)],
        str(tmp_path / "spm.model"),
        vocab_size=300,
    )
    out = tmp_path / "hf"
    rc = cli.main(
        ["export", "--format", "hf", "--checkpoint", str(model_dir), "--out", str(out),
         "--gin_file=models/t5_1_1_tiny.gin", "--gin.DROPOUT_RATE=0.0", "--vocabulary", spm]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "spiece.model"} <= {p.name for p in out.iterdir()}
    model = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    enc, dec = _inputs(4)
    diff = np.abs(_our_logits(config, params, enc, dec) - _hf_logits(model, enc, dec)).max()
    assert diff < TOL
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("predict: 3 plus 4").input_ids
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == "predict: 3 plus 4"
    # ... and to T5X, which imports back to the same arrays.
    rc = cli.main(
        ["export", "--format", "t5x", "--checkpoint", str(model_dir / "checkpoint_12"),
         "--out", str(tmp_path / "t5x"), "--gin_file=models/t5_1_1_tiny.gin"]
    )  # fmt: skip
    assert rc == 0
    from dsbs_jax.interop import t5x

    jax.tree.map(np.testing.assert_array_equal, t5x.load_t5x(tmp_path / "t5x"), params)


def test_dsbs_export_bad_input(tmp_path, capsys):
    from dsbs_jax import cli

    rc = cli.main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint" in err[0]
    (tmp_path / "empty").mkdir()
    rc = cli.main(["export", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path)])
    assert rc == 2 and "not a dsbs-jax, T5X or Hugging Face" in capsys.readouterr().err


def test_compare_hf_sides_start_from_the_same_function(monkeypatch):
    """bench/compare_hf.py's HF model, built from our initial params, has our initial loss; the
    T5 transformers initialises itself does not (its lm_head is the N(0, 1) embedding, unscaled).
    """
    import importlib
    import pathlib
    import sys

    monkeypatch.setenv("DSBS_BENCH_MALLOC", "default")  # leave this process's malloc alone
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    compare_hf = importlib.import_module("compare_hf")
    tt = sys.modules["train_throughput"]
    config = T5Config(
        vocab_size=VOCAB, emb_dim=32, num_heads=4, head_dim=8, num_encoder_layers=2,
        num_decoder_layers=2, mlp_dim=64, dropout_rate=0.1,
    )  # fmt: skip
    params = tt.make_train_step(config)[0]  # our (T5X) initialisation, as the bench's JAX side
    examples = tt.synthetic_examples(6, 48, 24, VOCAB, seed=5)
    model = compare_hf.hf_model(config, params)
    assert model.lm_head.weight is not model.shared.weight
    ours, theirs = compare_hf.initial_losses(config, params, model, examples)
    assert abs(ours - theirs) <= compare_hf.LOSS_TOL * ours, (ours, theirs)
    assert abs(ours - np.log(VOCAB)) < 1.0  # near uniform over the vocabulary
    assert model.training  # left as found, for the training steps

    torch.manual_seed(0)
    own = transformers.T5ForConditionalGeneration(model.config)
    assert own.lm_head.weight is own.shared.weight and not own.config.scale_decoder_outputs
    _, theirs_own = compare_hf.initial_losses(config, params, own, examples)
    assert theirs_own > ours + 3.0, (ours, theirs_own)
