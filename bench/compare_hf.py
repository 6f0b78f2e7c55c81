"""dsbs-jax against the paper's Hugging Face PyTorch training, side by side in one run (CPU).

The baseline does what the paper's code (`TaskPrefixTrainer.compute_loss`) does for each batch of
examples: a `predict:` forward and an `explain:` forward of `T5ForConditionalGeneration`, each
padded to the batch's longest input and target (DataCollatorForSeq2Seq, labels padded with -100),
loss = alpha * L_label + (1 - alpha) * L_rationale, backward, torch AdamW. dsbs-jax trains the
same T5 v1.1 config on the same token sequences with the native train step: both tasks of each
example packed into fixed-shape rows (exact alpha weighting), one jitted forward/backward.

Same data (cqa train with the released PaLM rationales), same sentencepiece vocabulary, same
dropout (0.1), same optimizer (AdamW, lr 5e-5). Both sides are warmed up, then timed over a fixed
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


def hf_config(cfg, dropout: float = 0.1):
    """The transformers T5Config of one of our T5 v1.1 configs."""
    import transformers

    return transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.emb_dim,
        d_kv=cfg.head_dim,
        d_ff=cfg.mlp_dim,
        num_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=dropout,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


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


class HFRunner:
    """The paper's training step on PyTorch CPU."""

    def __init__(self, cfg, examples: list, batch: int, alpha: float = 0.5, seed: int = 0):
        import torch
        import transformers

        torch.manual_seed(seed)
        self.model = transformers.T5ForConditionalGeneration(hf_config(cfg))
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
    hf = HFRunner(cfg, examples, args.batch)
    jx = JaxRunner(cfg, examples, args.rows, enc_len, dec_len)
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
