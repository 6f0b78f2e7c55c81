"""Hugging Face T5 checkpoints to and from our parameter tree (T5X's T5 v1.1 names).

Reads a `transformers` T5 directory: `config.json` plus `model.safetensors`,
`pytorch_model.bin` (needs torch) or `flax_model.msgpack`, or their sharded forms with an
`*.index.json`. Writes `config.json` + `model.safetensors` that `T5ForConditionalGeneration.
from_pretrained` loads. The conventions that differ between the two trees:

- HF Linear weights are [out, in]; ours are [in, out], with attention split into
  [embed, heads, head_dim] (query, key, value) and [heads, head_dim, embed] (out).
- Neither scales attention logits by 1/sqrt(d_kv) at run time: T5 folds it into the query
  weights, so query weights copy over unchanged.
- The relative position bias lives in HF's layer 0 of each stack as an Embedding
  [buckets, heads]; ours is `relpos_bias.rel_embedding` [heads, buckets] shared by the stack.
- HF's `shared` embedding is ours `token_embedder.embedding`; `lm_head.weight` [vocab, d]
  is ours `decoder.logits_dense.kernel` [d, vocab].
- Original T5 ties the output to the embedding and scales the decoder output by d_model**-0.5
  first; ours does the same with `logits_via_embedding=True`. transformers 5.x always sets
  `tie_word_embeddings=True` on a T5 config and keeps the old meaning in
  `scale_decoder_outputs`; an untied `lm_head.weight` in the file still loads untied.
  A scaled, untied head (no public checkpoint has one) loads with the scale folded into
  `logits_dense`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from dsbs_jax import atomic
from dsbs_jax.errors import UserError
from dsbs_jax.interop import safetensors_io
from dsbs_jax.model.t5 import T5Config

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "flax_model.msgpack")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
VOCAB_FILE = "spiece.model"
# What `save_hf` writes: a folder holding only these is an export it may replace.
EXPORT_FILES = (
    CONFIG_FILE,
    "model.safetensors",
    "generation_config.json",
    VOCAB_FILE,
    "tokenizer_config.json",
)

Params = dict[str, Any]

# feed_forward_proj <-> our mlp_activations. HF maps "gated-gelu" to the tanh GELU
# ("gelu_new"), which is flax's default `nn.gelu`; a plain "gelu" is the exact (erf) GELU,
# which our network does not have.
_ACTIVATIONS = {
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gated-silu": ("silu", "linear"),
    "gated-relu": ("relu", "linear"),
    "relu": ("relu",),
    "gelu_new": ("gelu",),
    "silu": ("silu",),
}
_FEED_FORWARD_PROJ = {
    ("gelu", "linear"): "gated-gelu",
    ("silu", "linear"): "gated-silu",
    ("relu", "linear"): "gated-relu",
    ("relu",): "relu",
    ("gelu",): "gelu_new",
    ("silu",): "silu",
}


# ----------------------------------------------------------------------------------------------
# Config


def is_hf_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a HF config and weights."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return False
    return any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES + INDEX_FILES)


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of a HF directory (or the file itself) as a dict."""
    path = os.fspath(path)
    file = os.path.join(path, CONFIG_FILE) if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{file}: no Hugging Face config.json") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None


def scales_decoder_output(hf_config: Mapping[str, Any]) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 before lm_head."""
    if "scale_decoder_outputs" in hf_config:  # transformers >= 5
        return bool(hf_config["scale_decoder_outputs"])
    return bool(hf_config.get("tie_word_embeddings", True))


def config_from_hf(
    path_or_config: str | os.PathLike | Mapping[str, Any], tied_head: bool | None = None
) -> T5Config:
    """A `T5Config` equal to a HF T5 config (a directory, its config.json, or the dict).

    `tied_head`: whether the weights have no separate `lm_head` (None: read the weights when a
    directory is given, else assume untied exactly when the output is not scaled).
    """
    if isinstance(path_or_config, Mapping):
        cfg, where = dict(path_or_config), "config"
    else:
        cfg, where = read_hf_config(path_or_config), os.fspath(path_or_config)
        if tied_head is None and os.path.isdir(where):
            tied_head = "lm_head.weight" not in _weight_names(where)
    if cfg.get("model_type", "t5") not in ("t5", "mt5"):
        raise UserError(f"{where}: model_type {cfg.get('model_type')!r} is not a T5")
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise UserError(
            f"{where}: field 'feed_forward_proj': {proj!r} is not supported "
            f"(one of {sorted(_ACTIVATIONS)})"
        )
    eps = float(cfg.get("layer_norm_epsilon", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise UserError(f"{where}: field 'layer_norm_epsilon': {eps} (only 1e-6 is supported)")
    scaled = scales_decoder_output(cfg)
    if tied_head is None:
        tied_head = scaled
    num_layers = int(cfg.get("num_layers", 6))
    return T5Config(
        vocab_size=int(cfg.get("vocab_size", 32128)),
        emb_dim=int(cfg.get("d_model", 512)),
        num_heads=int(cfg.get("num_heads", 8)),
        num_encoder_layers=num_layers,
        num_decoder_layers=int(cfg.get("num_decoder_layers") or num_layers),
        head_dim=int(cfg.get("d_kv", 64)),
        mlp_dim=int(cfg.get("d_ff", 2048)),
        mlp_activations=_ACTIVATIONS[proj],
        dropout_rate=float(cfg.get("dropout_rate", 0.1)),
        logits_via_embedding=bool(scaled and tied_head),
        relative_attention_num_buckets=int(cfg.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(cfg.get("relative_attention_max_distance", 128)),
        kernels="plain",  # said here, not left to a gin config the process may hold
    )


def hf_config_dict(config: T5Config) -> dict[str, Any]:
    """The `config.json` contents of a HF T5 equal to `config`."""
    acts = tuple(config.mlp_activations)
    if acts not in _FEED_FORWARD_PROJ:
        raise UserError(f"mlp_activations {acts} have no Hugging Face T5 equivalent")
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": _FEED_FORWARD_PROJ[acts],
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------------------------
# Reading weights


def _index(path: str) -> dict[str, str] | None:
    for name in INDEX_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                return dict(json.load(f)["weight_map"])
    return None


def _weight_names(path: str) -> set[str]:
    index = _index(path)
    if index is not None:
        return set(index)
    return set(read_hf_state(path, names_only=True))


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        raise UserError(
            f"{file}: reading a PyTorch checkpoint needs torch (pip install 'dsbs-jax[hf]'), "
            "or convert it to model.safetensors"
        ) from None
    state = torch.load(file, map_location="cpu", weights_only=True)
    out = {}
    for k, v in state.items():
        v = v.detach()
        if v.dtype == torch.bfloat16:
            import ml_dtypes  # noqa: PLC0415

            out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


def _read_flax(file: str) -> dict[str, np.ndarray]:
    """A HF Flax msgpack as PyTorch-style names and layouts (kernel [in, out] -> weight.T)."""
    from flax import serialization, traverse_util  # noqa: PLC0415

    with open(file, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    if set(tree) == {"params"}:
        tree = tree["params"]
    out = {}
    for key, v in traverse_util.flatten_dict(tree).items():
        *head, leaf = key
        name = ".".join(head)
        v = np.asarray(v)
        if leaf == "kernel":
            out[name + ".weight"] = v.T
        elif leaf in ("embedding", "weight", "scale"):
            out[name + ".weight"] = v
        else:
            raise UserError(f"{file}: unexpected parameter {'/'.join(key)}")
    return out


def _read_file(file: str) -> dict[str, np.ndarray]:
    if file.endswith(".safetensors"):
        return safetensors_io.read(file)
    if file.endswith(".msgpack"):
        return _read_flax(file)
    return _read_torch(file)


def read_hf_state(path: str | os.PathLike, names_only: bool = False) -> dict[str, np.ndarray]:
    """A HF T5 directory's weights as `{pytorch name: array}` (Flax weights are renamed)."""
    path = os.fspath(path)
    index = _index(path)
    if index is not None:
        out = {}
        for file in sorted(set(index.values())):
            out.update(_read_file(os.path.join(path, file)))
        return out
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if names_only and name == "model.safetensors":
                return dict.fromkeys(safetensors_io.read(file))
            return _read_file(file)
    raise UserError(f"{path}: no {', '.join(WEIGHT_FILES)} in this Hugging Face directory")


# ----------------------------------------------------------------------------------------------
# Name and layout mapping


def _attention_from_hf(state, prefix: str, heads: int, head_dim: int) -> Params:
    def proj(name):  # [h*k, d] -> [d, h, k]
        w = state.pop(f"{prefix}.{name}.weight")
        return np.ascontiguousarray(w.T.reshape(w.shape[1], heads, head_dim))

    out = state.pop(f"{prefix}.o.weight")  # [d, h*k] -> [h, k, d]
    return {
        "query": {"kernel": proj("q")},
        "key": {"kernel": proj("k")},
        "value": {"kernel": proj("v")},
        "out": {"kernel": np.ascontiguousarray(out.T.reshape(heads, head_dim, out.shape[0]))},
    }


def _mlp_from_hf(state, prefix: str, num_activations: int) -> Params:
    names = ["wi"] if num_activations == 1 else [f"wi_{i}" for i in range(num_activations)]
    mlp = {n: {"kernel": np.ascontiguousarray(state.pop(f"{prefix}.{n}.weight").T)} for n in names}
    mlp["wo"] = {"kernel": np.ascontiguousarray(state.pop(f"{prefix}.wo.weight").T)}
    return mlp


def _norm(state, name: str) -> Params:
    return {"scale": state.pop(name)}


def params_from_hf_state(
    state: Mapping[str, np.ndarray], hf_config: Mapping[str, Any], where: str = "checkpoint"
) -> tuple[Params, T5Config]:
    """Our parameter tree and config from HF weights (PyTorch names) and config."""
    state = dict(state)
    config = config_from_hf(hf_config, tied_head="lm_head.weight" not in state)
    h, k, n_act = config.num_heads, config.head_dim, len(config.mlp_activations)
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if "shared.weight" not in state and tied in state:
            state["shared.weight"] = state[tied]
        state.pop(tied, None)
    state.pop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", None)
    try:
        embedding = state.pop("shared.weight")
        params: Params = {"token_embedder": {"embedding": embedding}}
        enc: Params = {}
        for i in range(config.num_encoder_layers):
            p = f"encoder.block.{i}.layer"
            enc[f"layers_{i}"] = {
                "pre_attention_layer_norm": _norm(state, f"{p}.0.layer_norm.weight"),
                "attention": _attention_from_hf(state, f"{p}.0.SelfAttention", h, k),
                "pre_mlp_layer_norm": _norm(state, f"{p}.1.layer_norm.weight"),
                "mlp": _mlp_from_hf(state, f"{p}.1.DenseReluDense", n_act),
            }
        enc["relpos_bias"] = {
            "rel_embedding": np.ascontiguousarray(
                state.pop("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").T
            )
        }
        enc["encoder_norm"] = _norm(state, "encoder.final_layer_norm.weight")
        dec: Params = {}
        for i in range(config.num_decoder_layers):
            p = f"decoder.block.{i}.layer"
            dec[f"layers_{i}"] = {
                "pre_self_attention_layer_norm": _norm(state, f"{p}.0.layer_norm.weight"),
                "self_attention": _attention_from_hf(state, f"{p}.0.SelfAttention", h, k),
                "pre_cross_attention_layer_norm": _norm(state, f"{p}.1.layer_norm.weight"),
                "encoder_decoder_attention": _attention_from_hf(
                    state, f"{p}.1.EncDecAttention", h, k
                ),
                "pre_mlp_layer_norm": _norm(state, f"{p}.2.layer_norm.weight"),
                "mlp": _mlp_from_hf(state, f"{p}.2.DenseReluDense", n_act),
            }
        dec["relpos_bias"] = {
            "rel_embedding": np.ascontiguousarray(
                state.pop("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").T
            )
        }
        dec["decoder_norm"] = _norm(state, "decoder.final_layer_norm.weight")
    except KeyError as e:
        raise UserError(f"{where}: missing weight {e.args[0]} for this T5 config") from None
    lm_head = state.pop("lm_head.weight", None)
    if not config.logits_via_embedding:
        head = embedding if lm_head is None else lm_head  # [vocab, d]
        if scales_decoder_output(hf_config):  # scaled but untied: fold the scale in
            head = (head.astype(np.float32) * config.emb_dim**-0.5).astype(head.dtype)
        dec["logits_dense"] = {"kernel": np.ascontiguousarray(head.T)}
    if state:
        raise UserError(f"{where}: unexpected weights {sorted(state)[:5]} for a T5")
    params["encoder"], params["decoder"] = enc, dec
    return params, config


def _attention_to_hf(p: Params, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
        w = np.asarray(p[ours]["kernel"])  # [d, h, k]
        out[f"{prefix}.{theirs}.weight"] = w.reshape(w.shape[0], -1).T
    w = np.asarray(p["out"]["kernel"])  # [h, k, d]
    out[f"{prefix}.o.weight"] = w.reshape(-1, w.shape[-1]).T
    return out


def _mlp_to_hf(p: Params, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.{n}.weight": np.asarray(v["kernel"]).T for n, v in p.items()}


def hf_state_from_params(params: Params, config: T5Config) -> dict[str, np.ndarray]:
    """HF T5 weights (PyTorch names, C-contiguous numpy) from our parameter tree."""
    enc, dec = params["encoder"], params["decoder"]
    s: dict[str, np.ndarray] = {"shared.weight": np.asarray(params["token_embedder"]["embedding"])}
    for i in range(config.num_encoder_layers):
        lp, p = enc[f"layers_{i}"], f"encoder.block.{i}.layer"
        s[f"{p}.0.layer_norm.weight"] = np.asarray(lp["pre_attention_layer_norm"]["scale"])
        s.update(_attention_to_hf(lp["attention"], f"{p}.0.SelfAttention"))
        s[f"{p}.1.layer_norm.weight"] = np.asarray(lp["pre_mlp_layer_norm"]["scale"])
        s.update(_mlp_to_hf(lp["mlp"], f"{p}.1.DenseReluDense"))
    s["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = np.asarray(
        enc["relpos_bias"]["rel_embedding"]
    ).T
    s["encoder.final_layer_norm.weight"] = np.asarray(enc["encoder_norm"]["scale"])
    for i in range(config.num_decoder_layers):
        lp, p = dec[f"layers_{i}"], f"decoder.block.{i}.layer"
        s[f"{p}.0.layer_norm.weight"] = np.asarray(lp["pre_self_attention_layer_norm"]["scale"])
        s.update(_attention_to_hf(lp["self_attention"], f"{p}.0.SelfAttention"))
        s[f"{p}.1.layer_norm.weight"] = np.asarray(lp["pre_cross_attention_layer_norm"]["scale"])
        s.update(_attention_to_hf(lp["encoder_decoder_attention"], f"{p}.1.EncDecAttention"))
        s[f"{p}.2.layer_norm.weight"] = np.asarray(lp["pre_mlp_layer_norm"]["scale"])
        s.update(_mlp_to_hf(lp["mlp"], f"{p}.2.DenseReluDense"))
    s["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = np.asarray(
        dec["relpos_bias"]["rel_embedding"]
    ).T
    s["decoder.final_layer_norm.weight"] = np.asarray(dec["decoder_norm"]["scale"])
    if not config.logits_via_embedding:
        s["lm_head.weight"] = np.asarray(dec["logits_dense"]["kernel"]).T
    return {k: np.ascontiguousarray(v) for k, v in s.items()}


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_hf(path: str | os.PathLike) -> tuple[Params, T5Config]:
    """Our parameter tree (numpy) and T5Config from a HF T5 directory."""
    path = os.fspath(path)
    if not is_hf_dir(path):
        raise UserError(f"{path}: not a Hugging Face T5 directory (config.json + weights)")
    return params_from_hf_state(read_hf_state(path), read_hf_config(path), where=path)


def save_hf(
    params: Params,
    config: T5Config,
    out_dir: str | os.PathLike,
    vocab_path: str | os.PathLike | None = None,
    dtype: str | None = None,
) -> str:
    """Writes `config.json` + `model.safetensors` (+ `spiece.model`) that transformers loads.

    `dtype`: cast the weights ('float32', 'bfloat16'); None keeps theirs. The files are written
    into a folder beside `out_dir` and swapped in whole: a kill leaves the previous export
    complete. A folder that holds anything but an export's files is refused, not replaced.
    """
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - set(EXPORT_FILES))
        if foreign:
            raise UserError(
                f"--out {out_dir}: holds {', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}, not a Hugging Face export; an export "
                "replaces its folder whole, so give a new or empty one"
            )
    state = hf_state_from_params(params, config)
    cfg = hf_config_dict(config)
    if dtype is not None:
        import ml_dtypes  # noqa: PLC0415

        np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
        state = {k: v.astype(np_dtype) for k, v in state.items()}
        cfg["torch_dtype"] = dtype
    tmp = atomic.temporary_name(out_dir)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        _write_hf_files(tmp, state, cfg, vocab_path)
        atomic.replace_dir(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return out_dir


def _write_hf_files(out_dir: str, state: dict, cfg: dict, vocab_path) -> None:
    safetensors_io.write(
        os.path.join(out_dir, "model.safetensors"), state, metadata={"format": "pt"}
    )
    _write_json(os.path.join(out_dir, CONFIG_FILE), cfg, sort_keys=True)
    _write_json(
        os.path.join(out_dir, "generation_config.json"),
        {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0},
    )
    if vocab_path:
        shutil.copyfile(vocab_path, os.path.join(out_dir, VOCAB_FILE))
        _write_json(
            os.path.join(out_dir, "tokenizer_config.json"),
            {
                "tokenizer_class": "T5Tokenizer",
                "extra_ids": 100,
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
            },
        )


def _write_json(path: str, value: dict, sort_keys: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=sort_keys)
        f.write("\n")
