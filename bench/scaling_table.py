"""The docs/scaling.md table: `dsbs compile --json` for each TPU mesh gin with the model sizes it
is meant for, at batch 256 of 512/128 tokens. Each compile takes minutes on a small host.

    JAX_PLATFORMS=cpu python bench/scaling_table.py [--rows 0,2] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (gin files, what the row is, extra bindings) in the order of the table.
ROWS = [
    (["models/t5_1_1_base.gin", "meshes/tpu_v4_8.gin"], "base", []),
    (["models/t5_1_1_large.gin", "meshes/tpu_v4_8.gin"], "large", []),
    (["models/t5_1_1_large.gin", "meshes/tpu_v4_8.gin"], "large",
     ["--gin.REMAT_POLICY='dots_no_batch'"]),
    (["models/t5_1_1_large.gin", "meshes/tpu_v4_8.gin"], "large", ["--gin.REMAT_POLICY='full'"]),
    (["models/t5_1_1_base.gin", "meshes/tpu_v5e_16.gin"], "base", []),
    (["models/t5_1_1_xl.gin", "meshes/tpu_v5e_256.gin"], "xl", []),
    (["meshes/tpu_v5p_128_xxl.gin"], "xxl", []),
]  # fmt: skip


def compile_row(
    gin_files: list[str], bindings: list[str], batch: int, lengths: tuple[int, int]
) -> dict:
    """`dsbs compile --json`'s report, or {"error": its one line} for a step that does not fit."""
    cmd = [sys.executable, "-m", "dsbs_jax.cli", "compile", "--json"]
    cmd += [f"--gin_file={g}" for g in gin_files] + ["--gin_file=runs/dsbs.gin"]
    cmd += ["--gin.MIXTURE_OR_TASK_NAME='svamp_dsbs'", "--gin.TRAIN_STEPS=10000"]
    cmd += [f"--gin.BATCH_SIZE={batch}", "--gin.ACTIVATION_DTYPE='bfloat16'",
            f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {lengths[0]}, 'targets': {lengths[1]}}}"]  # fmt: skip
    cmd += bindings
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    if lines:
        return json.loads(lines[-1])
    errors = [line for line in out.stderr.splitlines() if line.startswith("dsbs compile: error:")]
    if out.returncode == 2 and errors:
        return {"error": errors[-1].removeprefix("dsbs compile: error: ")}
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")


def row(gin_files: list[str], size: str, bindings: list[str], r: dict) -> str:
    gib = 2**30
    name = " + ".join(g.split("/")[-1] for g in gin_files)
    name += "".join(f" `{b.removeprefix('--gin.')}`" for b in bindings)
    if "error" in r:
        return f"| {name} | | {size} | | | | | | | | no: {r['error']} | |"
    c = r["collectives"]
    mesh = f"{r['mesh']['data']} x {r['mesh']['model']}"
    return (
        f"| {name} | {r['topology']} | {size} | {mesh}"
        f" | {r['rules']} | {r['attention_logits']} | {r['remat_policy']}"
        f" | {r['state_bytes'] / gib:.2f} | {r['temp_bytes'] / gib:.2f}"
        f" | {r['total_bytes'] / gib:.2f} / {r['hbm_bytes'] / gib:.1f}"
        f" | {'yes' if r['fits'] else 'no'}"
        f" | {c['all-reduce']['count']} / {c['all-gather']['count']} / "
        f"{c['reduce-scatter']['count']} / {c['all-to-all']['count']} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lengths", default="512,128")
    args = p.parse_args()
    lengths = tuple(int(n) for n in args.lengths.split(","))
    print("| gin | slice | T5 v1.1 | data x model | rules | attention logits | remat | "
          "params + opt state GiB | temp GiB | total / HBM GiB | fits | "
          "all-reduce / all-gather / reduce-scatter / all-to-all |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i in (int(n) for n in args.rows.split(",")):
        gin_files, size, bindings = ROWS[i]
        report = compile_row(gin_files, bindings, args.batch, lengths)
        print(row(gin_files, size, bindings, report), flush=True)


if __name__ == "__main__":
    main()
