"""`dsbs prepare` killed at random moments over an existing dataset: is a dataset always there?

    python bench/prepare_kill.py --kills 10 [--source_dir ../shared/data/dsbs/svamp]

Prepares svamp once from a small records file (the "old" dataset), then, N times, starts
`dsbs prepare` writing a different dataset (the full released train split, or the small one,
alternating), SIGKILLs it at a random moment (half of the kills at a random time after start,
half at a random time after it logs "writing"), and reads the dataset back with plain TFDS in
this process. Prints one line per kill: when, and which dataset was found (old / new / NONE).
Exits 1 if any kill left no readable dataset.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_counts(data_dir: str) -> dict[str, int] | None:
    """Examples per split of dsbs_svamp under data_dir, read with TFDS alone; None if unreadable."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(os.path.join(data_dir, "dsbs_svamp", "1.0.0"))
        return {s: sum(1 for _ in builder.as_dataset(split=s)) for s in builder.info.splits}
    except Exception as e:  # noqa: BLE001 - any failure to read is the finding
        print(f"    unreadable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None


def prepare_cmd(data_dir: str, source: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dsbs_jax.cli",
        "prepare",
        "svamp",
        *source,
        "--data_dir",
        data_dir,
    ]


def kill_once(cmd: list[str], after_writing: bool, rng: random.Random) -> str:
    """Starts cmd, kills it at a random moment; returns when it was killed (or that it ended)."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    t0 = time.monotonic()
    if after_writing:
        for line in proc.stdout:
            if line.startswith(b"writing"):
                break
        delay = rng.uniform(0.0, 1.5)
        what = f"{delay:.2f} s after 'writing'"
    else:
        delay = rng.uniform(0.5, 8.0)
        what = f"{delay:.2f} s after start"
    time.sleep(delay)
    if proc.poll() is not None:
        proc.wait()
        return f"{what}: it had finished ({time.monotonic() - t0:.1f} s)"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"killed {what}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--source_dir", default=os.path.join(REPO, "..", "shared", "data", "dsbs", "svamp")
    )
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.sources import read_released
    from dsbs_jax.records import write_records

    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="prepare_kill_")
    data_dir = os.path.join(work, "data")
    small = os.path.join(work, "small.jsonl")
    write_records(small, read_released(load_card("svamp"), args.source_dir, "test")[:50])
    sources = {
        "small": ["--records", f"train={small}"],
        "full": ["--source_dir", args.source_dir],
    }
    subprocess.run(prepare_cmd(data_dir, sources["small"]), check=True, capture_output=True)
    expected = {"small": read_counts(data_dir)}
    print(f"old dataset (small): {expected['small']}")
    failures = 0
    current = "small"
    for i in range(args.kills):
        target = "full" if current == "small" else "small"
        when = kill_once(prepare_cmd(data_dir, sources[target]), i % 2 == 1, rng)
        counts = read_counts(data_dir)
        if counts is None:
            found = "NONE"
            failures += 1
        elif counts == expected.get(current):
            found = f"old ({current})"
        elif target in expected and counts == expected[target] or target not in expected:
            found = f"new ({target})"
            expected[target] = counts
            current = target
        else:
            found = f"UNEXPECTED {counts}"
            failures += 1
        leftovers = [n for n in os.listdir(data_dir) if n.startswith(".")]
        print(f"kill {i + 1}: {when}; dataset: {found}; temporary folders left: {len(leftovers)}")
    print(f"{args.kills} kills, {failures} without a readable dataset (work dir {work})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
