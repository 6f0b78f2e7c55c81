"""Training throughput of the native dsbs-jax train step on packed dsbs batches.

One example = one input with its label and its rationale (the `predict:` and the `explain:`
sequence, packed together into the same batch, exact alpha weighting). Prints examples/s, target
tokens/s, the share of non-padding tokens (packing efficiency), step time p50/p90, peak host
memory, device memory where the device reports it, and MFU given `--peak_flops`.

FLOPs: `dsbs_jax.model.counts.flops_per_example(config, enc_len, dec_len)` per packed row (every
dense projection, attention scores and values over the full row lengths, the logits; forward plus
backward = 3x forward), so MFU counts the work the device is given, padding included; the
"useful" MFU below scales it by the non-padding share.

    python bench/train_throughput.py --model tiny --steps 20
    python bench/train_throughput.py --model small --rows 4 --enc_len 192 --dec_len 80
    python bench/train_throughput.py --model path/to/t5_1_1_base.gin --data synthetic \
        --enc_len 512 --dec_len 128 --rows 32 --dtype bfloat16 --peak_flops 989e12

Data: `cqa` (the released cqa train split with its PaLM rationales, tokenised with a
sentencepiece vocabulary trained on it, cached under --cache_dir) or `synthetic` (random tokens
with cqa-like lengths scaled to the feature lengths; no files needed).
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host_malloc  # noqa: E402  (before numpy: see host_malloc.py)
import numpy as np  # noqa: E402
from packer import pack_examples  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "dsbs", "cqa")
EOS = 1
LABEL_TASK, RATIONALE_TASK = 1, 2

# The two configurations of the issue; anything else is a gin model file.
SIZES = {
    "tiny": dict(emb_dim=128, num_heads=4, head_dim=32, num_encoder_layers=2,
                 num_decoder_layers=2, mlp_dim=512),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, num_encoder_layers=8,
                  num_decoder_layers=8, mlp_dim=1024),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Data: token sequences shared by both sides of the comparison


def cqa_examples(
    data_dir: str = DEFAULT_DATA,
    cache_dir: str = "/tmp/dsbs_bench",
    vocab_size: int = 8000,
    max_len: int = 512,
) -> tuple[list[dict[str, np.ndarray]], int]:
    """The cqa train records as token arrays (pred_in, expl_in, label, rationale; EOS-ended).

    Returns them with the model's vocab size (pieces + 100 sentinels, rounded up to 128). The
    label is the teacher's (the `_label` task's training target).
    """
    import sentencepiece as spm

    from dsbs_jax.data import vocab as vocab_lib
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.sources import read_released
    from dsbs_jax.data.tasks import LABEL_PREFIX, RATIONALE_PREFIX

    records = [r for r in read_released(load_card("cqa"), data_dir, "train") if r.ok]
    model_path = os.path.join(cache_dir, f"cqa_spm_{vocab_size}.model")
    if not os.path.exists(model_path):
        texts = vocab_lib.training_texts(r.to_json() for r in records)
        vocab_lib.train_sentencepiece(texts, model_path, vocab_size)
    sp = spm.SentencePieceProcessor(model_file=model_path)

    def enc(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids[: max_len - 1] + [EOS], np.int32) for ids in sp.encode(texts)]

    pred = enc([LABEL_PREFIX + r.input for r in records])
    expl = enc([RATIONALE_PREFIX + r.input for r in records])
    label = enc([r.teacher_label for r in records])
    rat = enc([r.rationale for r in records])
    out = [
        {"pred_in": a, "expl_in": b, "label": c, "rationale": d}
        for a, b, c, d in zip(pred, expl, label, rat)
    ]
    size = sp.get_piece_size() + vocab_lib.EXTRA_IDS
    return out, int(-(-size // 128) * 128)


def synthetic_examples(
    n: int, enc_len: int, dec_len: int, vocab_size: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Random-token examples with cqa's length shape scaled to the feature lengths.

    Inputs ~ N(0.4, 0.1) * enc_len / 2 tokens (two per example share a row), rationales
    ~ N(0.6, 0.15) * dec_len, labels 2-5 tokens.
    """
    rng = np.random.default_rng(seed)

    def toks(length: int) -> np.ndarray:
        return np.append(rng.integers(3, vocab_size - 100, length - 1), EOS).astype(np.int32)

    out = []
    for _ in range(n):
        li = int(np.clip(rng.normal(0.4, 0.1) * enc_len, 4, enc_len // 2))
        lr = int(np.clip(rng.normal(0.6, 0.15) * dec_len, 4, dec_len - 8))
        body = toks(li)
        out.append(
            {"pred_in": body, "expl_in": body.copy(), "label": toks(int(rng.integers(2, 6))),
             "rationale": toks(lr)}
        )  # fmt: skip
    return out


def segments(ex: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The two (inputs, targets, task id) sequences of one example, label task first."""
    return [
        (ex["pred_in"], ex["label"], LABEL_TASK),
        (ex["expl_in"], ex["rationale"], RATIONALE_TASK),
    ]


def endless(examples: list, seed: int = 0) -> Iterator:
    """The examples in a fresh random order every epoch, forever."""
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(examples)):
            yield examples[i]


def choose_lengths(
    examples: list, rows: int, per_batch: float, fill: float = 0.93, multiple: int = 8
) -> tuple[int, int]:
    """Row lengths (enc, dec) so that `rows` rows hold about `per_batch` examples at `fill`.

    Taken from the data's mean token counts per example (both tasks), never shorter than the
    99th percentile of a single sequence.
    """
    enc = np.array([len(e["pred_in"]) + len(e["expl_in"]) for e in examples])
    dec = np.array([len(e["label"]) + len(e["rationale"]) for e in examples])
    one_enc = np.percentile([len(e["expl_in"]) for e in examples], 99)
    one_dec = np.percentile([len(e["rationale"]) for e in examples], 99)

    def up(x: float) -> int:
        return int(-(-x // multiple) * multiple)

    enc_len = up(max(per_batch * enc.mean() / (rows * fill), one_enc))
    dec_len = up(max(per_batch * dec.mean() / (rows * fill), one_dec))
    return enc_len, dec_len


def packed_batches(
    examples: list, rows: int, enc_len: int, dec_len: int, alpha: float = 0.5, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Endless packed batches (both tasks of each example in the same batch, exact weights)."""
    return pack_examples(
        (segments(e) for e in endless(examples, seed)), rows, enc_len, dec_len, (alpha, 1 - alpha)
    )


def prefetch(it: Iterator, depth: int = 4) -> Iterator:
    """Runs `it` in a background thread, `depth` items ahead (host work off the step's path)."""
    q: queue.Queue = queue.Queue(depth)

    def work():
        for item in it:
            q.put(item)

    threading.Thread(target=work, daemon=True).start()
    while True:
        yield q.get()


# ----------------------------------------------------------------------------------------------
# Model and the train step (the trainer's step: model.apply, token losses, exact weighting)


def model_config(
    name: str, vocab_size: int, dtype: str = "float32", dropout: float = 0.1, kernels: str = "auto"
):
    """T5Config for 'tiny', 'small' or a gin model file, with the vocab size, dtype and kernels
    ('auto': the CPU kernels on a CPU, as `dsbs train` picks them) set."""
    from dsbs_jax.model.t5 import T5Config

    if name in SIZES:
        return T5Config(
            vocab_size=vocab_size, dropout_rate=dropout, dtype=dtype, kernels=kernels,
            **SIZES[name],
        )  # fmt: skip
    import dataclasses

    import gin

    gin.clear_config()
    gin.parse_config_file(name)
    cfg = T5Config()  # the gin file binds every field but vocab_size's macro
    return dataclasses.replace(
        cfg, vocab_size=vocab_size, dtype=dtype, dropout_rate=dropout, kernels=kernels
    )


MODEL_KEYS = (
    "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
    "encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions",
)  # fmt: skip
STEP_KEYS = (*MODEL_KEYS, "decoder_loss_weights", "decoder_task_ids")


def make_train_step(config, learning_rate: float = 5e-5, z_loss: float = 0.0, seed: int = 0):
    """(params, opt_state, step_fn) for AdamW; step_fn(params, opt, step, batch) is jitted,
    donates params and optimizer state, and returns (params, opt, loss)."""
    import jax
    import jax.numpy as jnp
    import optax

    from dsbs_jax import weighting
    from dsbs_jax.model.t5 import Transformer, resolve_kernels
    from dsbs_jax.train import losses

    model = Transformer(resolve_kernels(config))  # this script is an entry point: JAX's backend
    tx = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    one = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(
        lambda r: model.init({"params": r}, one, one, one, enable_dropout=False)["params"]
    )(jax.random.PRNGKey(seed))
    import flax.linen as nn

    params = nn.meta.unbox(params)
    opt_state = tx.init(params)
    dropout_key = jax.random.PRNGKey(seed + 1)

    def train_step(params, opt_state, step, batch):
        rng = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            logits = model.apply(
                {"params": p}, **{k: batch[k] for k in MODEL_KEYS}, enable_dropout=True,
                rngs={"dropout": rng},
            )  # fmt: skip
            tok = losses.token_losses(
                logits, batch["decoder_target_tokens"], z_loss, model.config.kernels != "cpu"
            )
            loss, _ = weighting.weighted_loss(
                tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 2, "exact"
            )
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, opt_state, jax.jit(train_step, donate_argnums=(0, 1))


# ----------------------------------------------------------------------------------------------
# Measurement


def peak_host_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mib() -> float | None:
    """Peak device memory in use (MiB), where the device reports it (GPU/TPU), else None."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def run_jax(
    config,
    batches: Iterator,
    steps: int,
    warmup: int,
    sync_every_step: bool = True,
    state: list | None = None,
) -> dict[str, float]:
    """Trains `warmup` + `steps` steps; figures over the timed steps.

    With sync_every_step the host waits for each step (step-time percentiles); otherwise only
    at the end (steps overlap host work; the throughput figure). `state`, a list
    [params, opt_state, step_fn] from `make_train_step`, carries a built step from one call to
    the next (rounds of one process: one compile) and holds the updated state afterwards.
    """
    import jax

    if state is None:
        state = list(make_train_step(config))
    params, opt_state, step_fn = state
    keys = STEP_KEYS
    examples = real_enc = real_dec = 0
    times: list[float] = []
    shape = None
    for i in range(warmup + steps):
        host = next(batches)
        if i == warmup:
            jax.block_until_ready(params)
            t0 = time.perf_counter()
        ts = time.perf_counter()
        batch = {k: jax.device_put(host[k]) for k in keys}
        params, opt_state, loss = step_fn(params, opt_state, np.int32(i), batch)
        if sync_every_step or i == warmup + steps - 1:
            loss.block_until_ready()
        if i >= warmup:
            times.append(time.perf_counter() - ts)
            examples += host["num_examples"]
            real_enc += int((host["encoder_input_tokens"] > 0).sum())
            real_dec += int((host["decoder_target_tokens"] > 0).sum())
            shape = host["encoder_input_tokens"].shape + host["decoder_target_tokens"].shape[1:]
    wall = time.perf_counter() - t0
    state[:2] = params, opt_state
    rows, enc_len, dec_len = shape
    from dsbs_jax.model.counts import flops_per_example

    return {
        "examples_per_s": examples / wall,
        "target_tokens_per_s": real_dec / wall,
        "examples_per_step": examples / steps,
        "nonpad_share": (real_enc + real_dec) / (steps * rows * (enc_len + dec_len)),
        "nonpad_share_enc": real_enc / (steps * rows * enc_len),
        "nonpad_share_dec": real_dec / (steps * rows * dec_len),
        "step_p50_s": float(np.percentile(times, 50)),
        "step_p90_s": float(np.percentile(times, 90)),
        "flops_per_step": rows * flops_per_example(config, enc_len, dec_len),
        "wall_s": wall,
        "final_loss": float(loss),
        "rows": rows,
        "enc_len": enc_len,
        "dec_len": dec_len,
    }


def report(r: dict[str, float], peak_flops: float | None) -> str:
    """The figures as aligned lines."""
    lines = [
        f"shape                {r['rows']} rows x {r['enc_len']}/{r['dec_len']} tokens",
        f"examples/s           {r['examples_per_s']:.2f}  ({r['examples_per_step']:.2f} per step)",
        f"target tokens/s      {r['target_tokens_per_s']:.1f}",
        f"non-padding share    {r['nonpad_share']:.3f}  (encoder {r['nonpad_share_enc']:.3f}, "
        f"decoder {r['nonpad_share_dec']:.3f})",
        f"step time p50 / p90  {r['step_p50_s'] * 1e3:.1f} / {r['step_p90_s'] * 1e3:.1f} ms",
        f"peak host memory     {peak_host_mib():.0f} MiB",
    ]
    dev = device_peak_mib()
    if dev is not None:
        lines.append(f"peak device memory   {dev:.0f} MiB")
    achieved = r["flops_per_step"] / r["step_p50_s"]
    lines.append(
        f"achieved FLOP/s      {achieved / 1e9:.1f} GFLOP/s (counts.flops_per_example, p50)"
    )
    if peak_flops:
        mfu = achieved / peak_flops
        lines.append(f"MFU                  {mfu:.1%}  (useful: {mfu * r['nonpad_share']:.1%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | small | a gin model file")
    p.add_argument("--data", default="cqa", choices=("cqa", "synthetic"))
    p.add_argument("--data_dir", default=DEFAULT_DATA)
    p.add_argument("--cache_dir", default="/tmp/dsbs_bench")
    p.add_argument("--rows", type=int, default=4, help="packed rows per batch")
    p.add_argument("--per_batch", type=float, default=8.0,
                   help="examples per batch to size the rows for (when lengths are not given)")  # fmt: skip
    p.add_argument("--enc_len", type=int, default=0, help="0: chosen from the data")
    p.add_argument("--dec_len", type=int, default=0, help="0: chosen from the data")
    p.add_argument("--vocab_size", type=int, default=8192, help="synthetic data only")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument(
        "--kernels", default="auto",
        help="auto (the CPU kernels on a CPU, as dsbs train), cpu or plain (JAX autodiff, T5X's "
        "shape); a comma list (cpu,plain) measures each, side by side in alternating rounds",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="rounds of --steps for each kernels")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak_flops", type=float, default=0.0, help="device peak FLOP/s for MFU")
    args = p.parse_args(argv)

    if args.data == "cqa":
        examples, vocab_size = cqa_examples(args.data_dir, args.cache_dir)
    else:
        if not (args.enc_len and args.dec_len):
            p.error("--data synthetic needs --enc_len and --dec_len")
        examples = synthetic_examples(4096, args.enc_len, args.dec_len, args.vocab_size)
        vocab_size = args.vocab_size
    enc_len, dec_len = args.enc_len, args.dec_len
    if not (enc_len and dec_len):
        enc_len, dec_len = choose_lengths(examples, args.rows, args.per_batch)
    from dsbs_jax.model.t5 import KERNELS, resolve_kernels

    choices = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not choices or any(k not in KERNELS for k in choices):
        p.error(f"--kernels {args.kernels!r}: a comma list of {', '.join(KERNELS)}")
    configs = {
        k: resolve_kernels(model_config(args.model, vocab_size, args.dtype, kernels=k))
        for k in choices
    }
    batches = prefetch(packed_batches(examples, args.rows, enc_len, dec_len))
    states: dict[str, list] = {}
    rates: dict[str, list[float]] = {k: [] for k in choices}
    for rnd in range(args.rounds):
        for k, config in configs.items():
            first = k not in states
            state = states.setdefault(k, list(make_train_step(config)))
            r = run_jax(config, batches, args.steps, args.warmup if first else 1, state=state)
            rates[k].append(r["examples_per_s"])
            print(f"round {rnd + 1}: model {args.model} (vocab {vocab_size}), data {args.data}, "
                  f"dtype {args.dtype}, kernels {config.kernels}, malloc {host_malloc.MODE}, "
                  f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
            print(report(r, args.peak_flops or None), flush=True)
    if len(configs) > 1 or args.rounds > 1:
        print("examples/s by round: " + "; ".join(
            f"{configs[k].kernels} {', '.join(f'{x:.2f}' for x in v)} (median "
            f"{float(np.median(v)):.2f})" for k, v in rates.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
