"""A sweep's runs in several worker processes on one machine.

    parent: Sweep.setup (lengths measured, sweep.json written), then N workers:
        python -m dsbs_jax.experiments.workers OUT/workers.json INDEX
    worker: the same Sweep, set up once; walks the planned runs, most expensive first, and takes
        each run whose claim file OUT/claims/<method>_<fraction>_<seed> it creates first
        (O_CREAT | O_EXCL), so no run is trained twice and a worker never idles while work is
        left; appends each result to OUT/results.jsonl (one locked write per line).

Each worker runs XLA and TensorFlow on one thread: small students do not speed up with more
threads per step, and N single-threaded processes keep N cores busy through the Python, input
pipeline and checkpoint work that one process leaves serial. The workers share JAX's persistent
compilation cache on disk (OUT/.jax_cache, set in their environment). A run's result depends only
on its own seed and settings.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from dsbs_jax.errors import UserError
from dsbs_jax.experiments.config import Plan, SweepConfig
from dsbs_jax.experiments.sweep import Sweep, config_dict

CONFIG_FILE = "workers.json"
CLAIMS = "claims"

# One thread for XLA's CPU backend, TensorFlow's input pipeline and any BLAS a worker loads.
_ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_ONE_THREAD_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def worker_env(out: str) -> dict[str, str]:
    """The parent's environment with every thread pool a worker touches set to one thread, and
    JAX's persistent compilation cache in OUT/.jax_cache."""
    env = dict(os.environ)
    env.update(_ONE_THREAD_ENV)
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(out, ".jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + _ONE_THREAD_XLA).strip()
    return env


def _cost(plan: Plan) -> int:
    return plan.steps * plan.rows * plan.target_length


def run_in_workers(config: SweepConfig, n: int, log: Callable[[str], None]) -> None:
    """Runs the sweep's unfinished runs in `n` worker processes and waits for all of them."""
    out = os.path.abspath(config.out)
    claims = os.path.join(out, CLAIMS)
    shutil.rmtree(claims, ignore_errors=True)
    os.makedirs(claims)
    path = os.path.join(out, CONFIG_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config_dict(config), f, indent=1, sort_keys=True)
    env = worker_env(out)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dsbs_jax.experiments.workers", path, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for i in range(n)
    ]
    _relay(procs, log)
    codes = [p.wait() for p in procs]
    shutil.rmtree(claims, ignore_errors=True)
    if any(codes):
        raise UserError(f"sweep workers exited with {codes}; rerun the same command to resume")


def _relay(procs: list[subprocess.Popen], log: Callable[[str], None]) -> None:
    """Passes the workers' progress lines to `log` as they come (and other output as is)."""
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        sel.register(p.stdout, selectors.EVENT_READ, i)
    open_streams = len(procs)
    while open_streams:
        for key, _ in sel.select():
            line = key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            line = line.rstrip("\n")
            if line.startswith("@"):
                log(f"worker {key.data}: {line[1:]}")
            elif line.strip():
                print(f"  worker {key.data}| {line}", file=sys.stderr, flush=True)


def _claim(out: str, plan: Plan) -> bool:
    name = f"{plan.method}_{plan.fraction:g}_{plan.seed}"
    try:
        os.close(os.open(os.path.join(out, CLAIMS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def worker_main(config_path: str, index: int) -> int:
    """One worker: set up the sweep, then claim and run planned runs until none is left."""
    with open(config_path, encoding="utf-8") as f:
        values = json.load(f)
    values["workers"] = 1
    config = SweepConfig(**values)
    sweep = Sweep(config, log=lambda s: print("@" + s, flush=True))
    t0 = time.perf_counter()
    sweep.setup()
    plans = sweep.plans()
    todo = sorted(sweep.todo(plans), key=_cost, reverse=True)
    print(f"@set up in {time.perf_counter() - t0:.1f} s", flush=True)
    sweep.run_plans(todo, len(plans), claim=lambda p: _claim(sweep.out, p))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], int(sys.argv[2])))
