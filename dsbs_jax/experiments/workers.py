"""A sweep's runs in several worker processes on one machine.

    parent: Sweep.setup (lengths measured, sweep.json written), then N workers:
        python -m dsbs_jax.experiments.workers OUT/workers.json INDEX
    worker: the same Sweep, set up once; walks the planned runs, most expensive first (after
        one run of a program of its own: `worker_order`), and takes each run whose claim file
        OUT/claims/<method>_<fraction>_<seed> it creates first (O_CREAT | O_EXCL), so no run is
        trained twice and a worker never idles while work is left; appends each result to
        OUT/results.jsonl (one locked write per line). Its progress lines go to the parent,
        its standard error to OUT/worker_logs/worker_INDEX.log (printed if it fails).

Each worker runs XLA and TensorFlow on one thread, pinned to one core where the OS allows it
(Linux; worker i on the i-th of the parent's cores): small students gain little from more threads
per step (the quickstart's about 10% from a second one), and N single-threaded processes keep N
cores busy through the Python, input pipeline and checkpoint work that one process leaves
serial. The workers share JAX's persistent compilation cache on disk (OUT/.jax_cache, set in
their environment). A run's result depends only on its own seed and settings.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from dsbs_jax.errors import UserError, exit_cleanly_on_sigterm
from dsbs_jax.experiments.config import Plan, SweepConfig
from dsbs_jax.experiments.sweep import Sweep, config_dict

_MODULE = "dsbs_jax.experiments.workers"
CONFIG_FILE = "workers.json"
CLAIMS = "claims"
LOGS = "worker_logs"
TMP = ".tmp"  # OUT/.tmp/worker_<i>: each worker's TMPDIR, removed when the workers end
_TAIL_LINES = 30  # of a failed worker's log

# One thread for XLA's CPU backend, TensorFlow's input pipeline and any BLAS a worker loads.
# XLA's flags do not bound the thread pool its dot kernels (YNNPACK) run on: that pool is as
# large as the process's CPU set, so each worker is also pinned to one core (`worker_command`).
_ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"
_ONE_THREAD_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def worker_env(out: str, index: int | None = None) -> dict[str, str]:
    """The parent's environment with every thread pool a worker touches set to one thread,
    JAX's persistent compilation cache in OUT/.jax_cache, and (with an index) the worker's own
    temporary folder OUT/.tmp/worker_<index> as TMPDIR: what a worker stopped by a signal
    leaves there (TensorFlow autograph's generated files) goes with the folder."""
    env = dict(os.environ)
    if index is not None:
        env["TMPDIR"] = os.path.join(out, TMP, f"worker_{index}")
    env.update(_ONE_THREAD_ENV)
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(out, ".jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + _ONE_THREAD_XLA).strip()
    return env


def worker_command(config_path: str, index: int, module: str = _MODULE) -> list[str]:
    """The command that starts worker `index` (`python -m module CONFIG INDEX`). Where the OS
    lets a process choose its cores (Linux), the worker is pinned to one of the parent's cores
    (worker i to the i-th, wrapping around) before anything starts a thread, so that XLA sizes
    its thread pools to one core."""
    args = [config_path, str(index)]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        return [sys.executable, "-m", module, *args]
    pin = (
        f"import os, runpy; os.sched_setaffinity(0, {{{cores[index % len(cores)]}}}); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", pin, *args]


def _cost(plan: Plan) -> int:
    return plan.steps * plan.rows * plan.target_length


def _program(plan: Plan) -> tuple:
    """What sets a run's compiled programs: runs with the same key share them (fine-tuning and
    distillation do, at the same lengths)."""
    return (plan.rows, plan.input_length, plan.target_length, plan.pack)


def worker_order(todo: list[Plan], index: int) -> list[Plan]:
    """The order in which worker `index` tries to claim runs: most expensive first, except that
    worker i starts with the first run of the i-th program (in that order, wrapping around).

    Workers that start together then compile different programs, each into the shared
    persistent cache, and find the others' programs there when they reach those runs, instead
    of all compiling the most expensive one at once."""
    order = sorted(todo, key=_cost, reverse=True)
    firsts: dict[tuple, Plan] = {}
    for plan in order:
        firsts.setdefault(_program(plan), plan)
    if not firsts:
        return order
    first = list(firsts.values())[index % len(firsts)]
    return [first] + [p for p in order if p is not first]


def worker_log(out: str, index: int) -> str:
    """Where worker `index` writes its standard error (library start-up chatter, tracebacks)."""
    return os.path.join(out, LOGS, f"worker_{index}.log")


_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int) -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent ends, however it
    ends (SIGKILL included); a parent already gone means exit now. Linux only; elsewhere the
    `finally` of `run_in_workers` is what stops the workers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def popen_bound_to_parent(command: list[str], **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` of a process that ends when this one ends: no orphan worker keeps
    training and writing into the output folder after its sweep was stopped."""
    parent = os.getpid()
    return subprocess.Popen(command, preexec_fn=lambda: _end_with_parent(parent), **kwargs)


def run_in_workers(config: SweepConfig, n: int, log: Callable[[str], None]) -> None:
    """Runs the sweep's unfinished runs in `n` worker processes and waits for all of them.

    Their progress lines come to `log`; their standard error goes to OUT/worker_logs/, and the
    end of a failed worker's log is printed."""
    out = os.path.abspath(config.out)
    claims = os.path.join(out, CLAIMS)
    shutil.rmtree(claims, ignore_errors=True)
    os.makedirs(claims)
    os.makedirs(os.path.join(out, LOGS), exist_ok=True)
    path = os.path.join(out, CONFIG_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config_dict(config), f, indent=1, sort_keys=True)
    tmp = os.path.join(out, TMP)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed sweep's
    procs = []
    for i in range(n):
        env = worker_env(out, i)
        os.makedirs(env["TMPDIR"])
        with open(worker_log(out, i), "w", encoding="utf-8") as err:
            procs.append(
                popen_bound_to_parent(
                    worker_command(path, i),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    bufsize=1,
                )
            )
    try:
        _relay(procs, log)
        codes = [p.wait() for p in procs]
    finally:  # an interrupted sweep (Ctrl-C, an error) stops its workers before it returns
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(claims, ignore_errors=True)
    for i, code in enumerate(codes):
        if code:
            with open(worker_log(out, i), encoding="utf-8", errors="replace") as f:
                tail = f.read().splitlines()[-_TAIL_LINES:]
            print(
                f"worker {i} exited with {code}; the end of {worker_log(out, i)}:", file=sys.stderr
            )
            print("\n".join("  " + line for line in tail), file=sys.stderr, flush=True)
    if any(codes):
        raise UserError(f"sweep workers exited with {codes}; rerun the same command to resume")


def _relay(procs: list[subprocess.Popen], log: Callable[[str], None]) -> None:
    """Passes the workers' progress lines to `log` as they come (other output as is)."""
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
    todo = worker_order(sweep.todo(plans), index)
    print(f"@set up in {time.perf_counter() - t0:.1f} s", flush=True)
    sweep.run_plans(todo, len(plans), claim=lambda p: _claim(sweep.out, p))
    return 0


def _main(argv: list[str]) -> int:
    exit_cleanly_on_sigterm()
    try:
        return worker_main(argv[0], int(argv[1]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
