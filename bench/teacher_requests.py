"""Requests per second of `dsbs teach`'s openai backend against a loopback server.

  python bench/teacher_requests.py [--requests 2000] [--concurrency 32] [--in_process]

The server (tests/loopback_server.py, a ThreadingHTTPServer) answers every request at once, in a
separate process unless --in_process, so the figure is the client's own cost: the whole stage-1
path (prompt building, cache keys, HTTP with keep-alive, JSON, parsing, the cache file and the
records file), 2,000 distinct prompts at concurrency 32. On 2 CPU cores the server's threads
compete with the client for them, so this is a lower bound on the client's rate.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from loopback_server import ScriptedServer, last_query  # noqa: E402

from dsbs_jax.data.cards import load_card  # noqa: E402
from dsbs_jax.data.sources import record_from_fields  # noqa: E402
from dsbs_jax.teacher.backends.base import SamplingParams  # noqa: E402
from dsbs_jax.teacher.backends.openai import OpenAIBackend  # noqa: E402
from dsbs_jax.teacher.extract import extract  # noqa: E402


def answer(body, path, seen):
    i = last_query(body).split("has ", 1)[1].split(" ", 1)[0]
    return f"Ann has {i} pens and buys 2 more. The answer is ({i} + 2).\n\nQ: Next"


def serve() -> None:
    """Runs the server until stdin closes; prints its base URL first."""
    with ScriptedServer(answer) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


def run(base_url: str, n: int, concurrency: int, endpoint: str) -> tuple[float, float]:
    card = load_card("svamp")
    inputs = [
        record_from_fields(
            card,
            {"input": f"Ann has {i} pens and buys 2.\nHow many?", "label": f"({i} + 2)"},
            f"b{i}",
            "bench",
            None,
        )
        for i in range(n)
    ]
    backend = OpenAIBackend(
        base_url,
        "bench",
        endpoint=endpoint,
        concurrency=concurrency,
        timeout=30.0,
        retry_base_delay=0.01,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records, stats = extract(
            card,
            inputs,
            backend,
            SamplingParams(stop=("Q:",)),
            f"{tmp}/out.jsonl",
            f"{tmp}/cache",
            progress=False,
        )
        seconds = time.perf_counter() - t0
    assert stats.requested == n and all(r.ok for r in records), stats
    return n / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--endpoint", default="completions", choices=("chat", "completions"))
    parser.add_argument("--in_process", action="store_true", help="server in this process")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.in_process:
        with ScriptedServer(answer) as server:
            rate, seconds = run(server.base_url, args.requests, args.concurrency, args.endpoint)
    else:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            base_url = proc.stdout.readline().strip()
            rate, seconds = run(base_url, args.requests, args.concurrency, args.endpoint)
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
    where = "in-process" if args.in_process else "separate-process"
    print(
        f"teacher requests: {args.requests} requests, concurrency {args.concurrency}, "
        f"{args.endpoint} endpoint, {where} loopback server: {seconds:.2f} s, "
        f"{rate:.0f} requests/s"
    )


if __name__ == "__main__":
    main()
