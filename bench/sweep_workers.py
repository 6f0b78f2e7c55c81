"""A small sweep in one process (XLA on every core) against one-thread worker processes.

On the quickstart's data (the built-in `arith` task, default budget sizes, written to a temporary
folder once), the same sweep runs as `dsbs sweep ... --workers 1` and `--workers N` (default 2),
each in a fresh process with a fresh output folder (so each side pays its start, imports and
compiles), the side that goes first alternating over `--rounds`. Prints each wall time and
their ratio. The two sides round differently (one-thread XLA), so their accuracies are not
compared.

    python bench/sweep_workers.py                      # 4 runs of 300 steps, 2 rounds
    python bench/sweep_workers.py --steps 1000 --workers 2 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _sweep(data_dir: str, out: str, workers: int, args: argparse.Namespace) -> float:
    """Wall seconds of one `dsbs sweep` in a process of its own."""
    cmd = [
        sys.executable, "-c", "import sys; from dsbs_jax.cli import main; sys.exit(main())",
        "sweep", "arith", "--data_dir", data_dir, "--out", out, "--workers", str(workers),
        "--methods", "finetune,dsbs", "--fractions", "50", "--seeds", str(args.seeds),
        "--steps", str(args.steps), "--batch_size", "8", "--model", "quickstart",
        "--test_examples", "1000",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"the sweep with --workers {workers} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=2, help="runs = 2 methods x seeds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    from dsbs_jax.experiments.builtin_data import make_builtin_data
    from dsbs_jax.experiments.quickstart import BUDGETS

    print(f"load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; {2 * args.seeds} runs of "
          f"{args.steps} steps (fine-tuning and dsbs, 500 examples)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dsbs_sweep_workers_") as tmp:
        default = BUDGETS["default"]
        data_dir, _ = make_builtin_data(
            tmp, default["sizes"], seed=0, difficulty=default["difficulty"], log=lambda s: None
        )
        for r in range(args.rounds):  # the side that goes first alternates
            sides = [("one", 1), ("many", args.workers)][:: 1 if r % 2 == 0 else -1]
            wall = {n: _sweep(data_dir, os.path.join(tmp, f"{n}_{r}"), w, args) for n, w in sides}
            one, many = wall["one"], wall["many"]
            print(
                f"round {r + 1}: one process {one:.1f} s, {args.workers} workers {many:.1f} s, "
                f"ratio {one / many:.2f} (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
