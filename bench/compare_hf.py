"""dsbs-jax against the paper's Hugging Face PyTorch training, side by side in one run (CPU).

The baseline does what the paper's code (`TaskPrefixTrainer.compute_loss`) does for each batch of
examples: a `predict:` forward and an `explain:` forward of `T5ForConditionalGeneration`, each
padded to the batch's longest input and target (DataCollatorForSeq2Seq, labels padded with -100),
loss = alpha * L_label + (1 - alpha) * L_rationale, backward, torch AdamW. dsbs-jax trains the
same T5 v1.1 config on the same token sequences with the native train step: both tasks of each
example packed into fixed-shape rows (exact alpha weighting), one jitted forward/backward.

Same data (cqa train with the released PaLM rationales), same sentencepiece vocabulary, same
initial weights (the HF model is built from the JAX side's; both initial losses are printed and
must match before anything is timed), same dropout (0.1), same optimizer (AdamW, lr 5e-5). Both sides are warmed up, then timed over a fixed
number of steps; the rounds alternate (HF, JAX, HF, JAX, ...) so that load from other processes
falls on both, and the ratio is taken per round. One example = one input with its label and
rationale.

    python bench/compare_hf.py --config tiny
    python bench/compare_hf.py --config small --steps 6 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import host_malloc  # noqa: E402  (before numpy: see host_malloc.py)
import numpy as np  # noqa: E402
import train_throughput as tt  # noqa: E402
from packer import pack_examples  # noqa: E402

# Relative tolerance of the initial-loss check (float32 on both sides).
LOSS_TOL = 1e-4


def hf_model(cfg, params):
    """transformers' T5ForConditionalGeneration computing what `Transformer(cfg)` computes with
    `params`: our config and weights through our exporter (dsbs_jax.interop.hf), lm_head untied.

    A T5 that transformers initialises itself is not the same function at init: transformers 5
    always ties lm_head to the shared embedding (N(0, 1) entries), and `tie_word_embeddings=False`
    only turns off the d_model**-0.5 scale of the decoder output, so its initial logits have a
    standard deviation of ~sqrt(d_model) (a loss of ~63 at tiny, not ~log(vocab) = 9.0). Ours,
    as T5X, has its own `logits_dense` initialised with variance 1/d_model."""
    import torch
    import transformers

    from dsbs_jax.interop import hf

    conf = hf.hf_config_dict(cfg)
    conf.pop("torch_dtype")
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**conf))
    state = hf.hf_state_from_params(params, cfg)
    # transformers 5 ties a fresh T5's head to the embedding; T5 v1.1 has its own.
    model.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.emb_dim))
    for stack in ("encoder", "decoder"):  # the stacks' embeddings are `shared`
        state[f"{stack}.embed_tokens.weight"] = state["shared.weight"]
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model


def _pad(seqs: list[np.ndarray], value: int):
    import torch

    out = np.full((len(seqs), max(len(s) for s in seqs)), value, np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def collate(examples: list[dict], inputs: str, targets: str) -> dict:
    """DataCollatorForSeq2Seq: pad to the batch's longest; labels padded with -100."""
    ids = _pad([e[inputs] for e in examples], 0)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "labels": _pad([e[targets] for e in examples], -100)}  # fmt: skip


def initial_losses(cfg, params, model, examples: list, alpha: float = 0.5) -> tuple[float, float]:
    """(ours, HF's) training loss on `examples` before any step, dropout off.

    Ours: the examples packed into one batch (no truncation), exact weighting, as the JAX step.
    HF's: alpha * L_label + (1 - alpha) * L_rationale on the padded batches, as its step."""
    import jax
    import torch

    from dsbs_jax import weighting
    from dsbs_jax.model.t5 import Transformer, resolve_kernels
    from dsbs_jax.train import losses

    segs = [tt.segments(e) for e in examples]
    enc_len = max(len(i) for s in segs for i, _, _ in s)
    dec_len = max(len(t) for s in segs for _, t, _ in s)
    n = len(examples)
    batch = next(pack_examples(segs, 2 * n, enc_len, dec_len, (alpha, 1 - alpha), window=n))
    assert batch["num_examples"] == n

    def loss(params, batch):  # jitted: one compile instead of one per operation
        config = resolve_kernels(cfg)
        logits = Transformer(config).apply(
            {"params": params}, **{k: batch[k] for k in tt.MODEL_KEYS}, enable_dropout=False
        )
        tok = losses.token_losses(
            logits, batch["decoder_target_tokens"], plain=config.kernels != "cpu"
        )
        return weighting.weighted_loss(
            tok, batch["decoder_loss_weights"], batch["decoder_task_ids"], 2, "exact"
        )[0]

    ours = jax.jit(loss)(params, {k: batch[k] for k in tt.STEP_KEYS})
    was_training = model.training
    model.eval()
    with torch.no_grad():
        theirs = (
            alpha * model(**collate(examples, "pred_in", "label")).loss
            + (1 - alpha) * model(**collate(examples, "expl_in", "rationale")).loss
        )
    model.train(was_training)
    return float(ours), float(theirs)


class HFRunner:
    """The paper's training step on PyTorch CPU."""

    def __init__(self, model, examples: list, batch: int, alpha: float = 0.5, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.model = model
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5, weight_decay=0.0)
        self.data = tt.endless(examples, seed)
        self.batch, self.alpha = batch, alpha
        self.real = self.total = 0

    def step(self) -> float:
        exs = [next(self.data) for _ in range(self.batch)]
        pred = collate(exs, "pred_in", "label")
        expl = collate(exs, "expl_in", "rationale")
        for b in (pred, expl):
            self.real += int((b["input_ids"] != 0).sum() + (b["labels"] != -100).sum())
            self.total += b["input_ids"].numel() + b["labels"].numel()
        loss = self.alpha * self.model(**pred).loss + (1 - self.alpha) * self.model(**expl).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, steps: int, warmup: int) -> dict[str, float]:
        for _ in range(warmup):
            self.step()
        self.real = self.total = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step()  # float(): waits for the step
        wall = time.perf_counter() - t0
        return {"examples_per_s": steps * self.batch / wall, "wall_s": wall,
                "nonpad_share": self.real / self.total, "final_loss": loss}  # fmt: skip


class JaxRunner:
    """The dsbs-jax train step on packed batches; keeps its state across rounds."""

    def __init__(self, cfg, examples: list, rows: int, enc_len: int, dec_len: int, alpha=0.5):
        self.cfg = cfg
        self.batches = tt.prefetch(tt.packed_batches(examples, rows, enc_len, dec_len, alpha))
        self.state = tt.make_train_step(cfg)
        self.i = 0

    def run(self, steps: int, warmup: int) -> dict[str, float]:
        import jax

        params, opt, step_fn = self.state
        examples = real = total = 0
        for k in range(warmup + steps):
            host = next(self.batches)
            if k == warmup:
                jax.block_until_ready(params)
                t0 = time.perf_counter()
            batch = {key: host[key] for key in tt.STEP_KEYS}
            params, opt, loss = step_fn(params, opt, np.int32(self.i), batch)
            self.i += 1
            if k >= warmup:
                examples += host["num_examples"]
                real += int((host["encoder_input_tokens"] > 0).sum())
                real += int((host["decoder_target_tokens"] > 0).sum())
                total += host["encoder_input_tokens"].size + host["decoder_target_tokens"].size
        loss = float(loss)  # waits for the last step
        wall = time.perf_counter() - t0
        self.state = (params, opt, step_fn)
        return {"examples_per_s": examples / wall, "wall_s": wall,
                "nonpad_share": real / total, "final_loss": loss,
                "examples_per_step": examples / steps}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", choices=tuple(tt.SIZES))
    p.add_argument("--batch", type=int, default=8, help="examples per HF step")
    p.add_argument("--rows", type=int, default=4, help="packed rows per JAX step")
    p.add_argument("--enc_len", type=int, default=0, help="0: chosen from the data")
    p.add_argument("--dec_len", type=int, default=0, help="0: chosen from the data")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side per round")
    p.add_argument(
        "--warmup", type=int, default=5,
        help="untimed steps per side before round 1: JAX keeps up to 3 steps' buffers in flight,"
        " and the heap grows to hold them during the first 4-5 steps",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=2,
        help="torch threads; fewer than the machine's cores pins the process to that many",
    )  # fmt: skip
    p.add_argument("--data_dir", default=tt.DEFAULT_DATA)
    p.add_argument("--cache_dir", default="/tmp/dsbs_bench")
    args = p.parse_args(argv)

    # Both sides on the same cores: XLA sizes its thread pools (its dot kernels' included) to the
    # process's CPU set, which no XLA flag bounds, so fewer threads means fewer cores. Set before
    # either side starts a thread.
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 0 < args.threads < len(cores):
        os.sched_setaffinity(0, cores[: args.threads])
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # a random T5 makes denormals: ~50x slower steps without

    examples, vocab_size = tt.cqa_examples(args.data_dir, args.cache_dir)
    enc_len, dec_len = args.enc_len, args.dec_len
    if not (enc_len and dec_len):
        enc_len, dec_len = tt.choose_lengths(examples, args.rows, args.batch)
    cfg = tt.model_config(args.config, vocab_size)
    print(f"config {args.config}: d_model {cfg.emb_dim}, layers {cfg.num_encoder_layers}+"
          f"{cfg.num_decoder_layers}, heads {cfg.num_heads}x{cfg.head_dim}, d_ff {cfg.mlp_dim}, "
          f"vocab {vocab_size}; HF batch {args.batch} examples; JAX {args.rows} rows x "
          f"{enc_len}/{dec_len}; threads {args.threads}"
          f"{f' on {len(os.sched_getaffinity(0))} cores' if cores else ''}; malloc "
          f"{host_malloc.MODE}; load {os.getloadavg()[0]:.1f}",
          flush=True)  # fmt: skip
    # Both sides start from the same function: the HF model is built from our initial params.
    jx = JaxRunner(cfg, examples, args.rows, enc_len, dec_len)
    model = hf_model(cfg, jx.state[0])
    first = tt.endless(examples)  # the HF side's first batch
    ours, theirs = initial_losses(cfg, jx.state[0], model, [next(first) for _ in range(args.batch)])
    diff = abs(ours - theirs)
    match = diff <= LOSS_TOL * max(1.0, abs(ours))
    print(f"initial loss (same {args.batch} examples, dropout off, uniform over the vocab "
          f"{np.log(vocab_size):.3f}): ours {ours:.4f}, HF {theirs:.4f}", flush=True)  # fmt: skip
    if not match:
        print(f"initial losses differ: ours {ours:.4f}, HF {theirs:.4f} (|diff| {diff:.2e}): the "
              "two sides do not compute the same function, so no ratio is measured")  # fmt: skip
        return 1
    print(f"initial losses match: ours {ours:.4f}, HF {theirs:.4f} (|diff| {diff:.1e})")
    hf = HFRunner(model, examples, args.batch)
    ratios = []
    for r in range(args.rounds):
        warm = args.warmup if r == 0 else 1
        h = hf.run(args.steps, warm)
        j = jx.run(args.steps, warm)
        ratios.append(j["examples_per_s"] / h["examples_per_s"])
        print(f"round {r + 1}: HF {h['examples_per_s']:.2f} ex/s (non-pad {h['nonpad_share']:.3f},"
              f" loss {h['final_loss']:.3f})  JAX {j['examples_per_s']:.2f} ex/s (non-pad "
              f"{j['nonpad_share']:.3f}, {j['examples_per_step']:.2f} ex/step, loss "
              f"{j['final_loss']:.3f})  ratio {ratios[-1]:.2f}  load {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
    print(
        f"ratio JAX/HF examples/s: median {np.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
