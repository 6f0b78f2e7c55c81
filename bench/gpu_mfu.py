"""MFU and examples/s of T5 v1.1 base and large, bf16, packed 512/128, on one GPU (< 8 minutes).

The one prepared GPU check of bench/. Synthetic packed dsbs batches (random tokens with cqa's
length shape, both tasks of each example in the same batch; no files needed), the native train
step (AdamW, exact weighting, dropout 0.1, donated state), bf16 activations with float32
parameters. FLOPs per step: `counts.flops_per_example(config, 512, 128)` per row (forward + backward,
attention over the full rows, logits); MFU = FLOP/s at the p50 step time / --peak_flops (default
989e12: H200 dense bf16). Writes a JSON summary to $OUT/gpu_mfu.json when $OUT is set.

    python bench/gpu_mfu.py                       # on the GPU machine
    python bench/gpu_mfu.py --dry_run             # here, on CPU: tiny config, tiny lengths
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402

MODELS = os.path.join(tt.ROOT, "dsbs_jax", "gin_configs", "models")
# rows per batch: enough work per step to fill the GPU, well inside 141 GB with AdamW state
PLAN = {"base": 128, "large": 64}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="base,large")
    p.add_argument("--enc_len", type=int, default=512)
    p.add_argument("--dec_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=0, help="0: the per-model plan")
    p.add_argument("--peak_flops", type=float, default=989e12)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--budget_s", type=float, default=420.0, help="skip models past this")
    p.add_argument("--dry_run", action="store_true", help="tiny config and lengths (CPU check)")
    args = p.parse_args(argv)
    import jax

    from dsbs_jax.model.counts import flops_per_example, num_params

    for name in args.models.split(","):  # the gin files parse, whatever runs below
        spec = name if name in tt.SIZES else os.path.join(MODELS, f"t5_1_1_{name}.gin")
        cfg = tt.model_config(spec, 32128, args.dtype)
        print(f"{name}: {num_params(cfg) / 1e6:.0f}M parameters, "
              f"{flops_per_example(cfg, args.enc_len, args.dec_len) / 1e9:.0f} GFLOP per row")  # fmt: skip
    if args.dry_run:
        args.models, args.enc_len, args.dec_len = "tiny", 64, 32
        args.steps, args.warmup, args.rows = 3, 1, 2

    print(f"devices: {jax.devices()}", flush=True)
    t_start = time.time()
    summary = []
    for name in args.models.split(","):
        if time.time() - t_start > args.budget_s:
            print(f"{name}: skipped (time budget spent)")
            continue
        spec = name if name in tt.SIZES else os.path.join(MODELS, f"t5_1_1_{name}.gin")
        cfg = tt.model_config(spec, 32128, args.dtype)
        rows = args.rows or PLAN.get(name, 8)
        examples = tt.synthetic_examples(8 * rows * 20, args.enc_len, args.dec_len, 32128)
        batches = tt.prefetch(tt.packed_batches(examples, rows, args.enc_len, args.dec_len))
        t0 = time.time()
        r = tt.run_jax(cfg, batches, args.steps, args.warmup)
        print(f"\n== T5 v1.1 {name} ({args.dtype}), {time.time() - t0:.0f} s with compilation")
        print(tt.report(r, args.peak_flops), flush=True)
        mfu = r["flops_per_step"] / r["step_p50_s"] / args.peak_flops
        summary.append({"model": name, "mfu": mfu, "useful_mfu": mfu * r["nonpad_share"],
                        "peak_device_mib": tt.device_peak_mib(), **r})  # fmt: skip
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_mfu.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
