"""The trainer's tf.data pipeline alone: milliseconds per batch, with a small split's preprocessed
examples kept in memory (the default) and preprocessed again every epoch (seqio's own path).

On the quickstart's data (the built-in `arith` task, easy preset, written to a temporary folder):
the dsbs mixture (packed rows of 96/52 tokens) and distillation (48/4), 8 rows a batch, 500
training examples, tf.data on one private thread (the trainer's default on small hosts). Both
ways give the same batches; the script checks that (sha1 of every array) before it prints.

    python bench/input_pipeline.py                 # 1000 batches a pipeline and way
    python bench/input_pipeline.py --batches 300 --rounds 3
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _batches(name: str, lengths: dict[str, int], pack: bool, split: str, n: int):
    """(seconds for n batches after the first, sha1 of all n + 1 batches)."""
    from dsbs_jax.train import input_pipeline

    ds, _, _ = input_pipeline.build_dataset(name, lengths, 8, split=split, seed=1, pack=pack)
    it = input_pipeline.numpy_batches(ds, threads=1)
    digest = hashlib.sha1()

    def take():
        b = next(it)
        for k in sorted(b):
            digest.update(b[k].tobytes())

    take()  # building the pipeline and filling the shuffle buffer: not timed
    t0 = time.perf_counter()
    for _ in range(n):
        take()
    return time.perf_counter() - t0, digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--examples", type=int, default=500, help="training examples (train[:N])")
    args = p.parse_args(argv)

    from dsbs_jax.data import tasks as tasks_lib
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.experiments.builtin_data import make_builtin_data
    from dsbs_jax.train import input_pipeline

    out = tempfile.mkdtemp(prefix="dsbs_bench_pipeline_")
    atexit.register(shutil.rmtree, out, True)  # the built-in data is removed at exit
    sizes = {"train": 1000, "validation": 200, "test": 200}
    data_dir, _ = make_builtin_data(out, sizes, difficulty="easy", log=lambda s: None)
    tasks_lib.register_card_tasks(load_card("arith"), data_dir, None)
    mixture = tasks_lib.register_dsbs_mixture("arith", 0.5)
    split = f"train[:{args.examples}]"
    pipelines = [
        (mixture, {"inputs": 96, "targets": 52}, True),
        ("arith_distill", {"inputs": 48, "targets": 4}, False),
    ]
    limit = input_pipeline.MAX_EXAMPLES_IN_MEMORY
    print(f"{args.batches} batches of 8 rows, {split}, one tf.data thread; "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name, lengths, pack in pipelines:
        tasks_lib.bind_tasks(name, data_dir, None)
        times: dict[str, list[float]] = {"in memory": [], "every epoch": []}
        digests = set()
        for _ in range(args.rounds):
            for way, cap in (("in memory", limit), ("every epoch", 0)):
                input_pipeline.MAX_EXAMPLES_IN_MEMORY = cap
                seconds, digest = _batches(name, lengths, pack, split, args.batches)
                times[way].append(1000 * seconds / args.batches)
                digests.add(digest)
        input_pipeline.MAX_EXAMPLES_IN_MEMORY = limit
        if len(digests) != 1:
            print(f"{name}: the two ways gave different batches", file=sys.stderr)
            return 1
        kept, again = (min(times[w]) for w in ("in memory", "every epoch"))
        print(f"{name:14s} ms/batch in memory {' '.join(f'{t:.2f}' for t in times['in memory'])}"
              f" | every epoch {' '.join(f'{t:.2f}' for t in times['every epoch'])}"
              f" | best of each: {again / kept:.2f}x; same batches")  # fmt: skip
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
