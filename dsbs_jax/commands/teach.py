"""`dsbs teach`: stage 1, few-shot CoT rationales and labels from a teacher, resumable.

  dsbs teach svamp --split test --source_dir DATA/svamp --backend files --out out/teach
  dsbs teach cqa --split train --source_dir DATA/cqa --backend openai \
      --base_url http://localhost:8000/v1 --model M --endpoint completions --concurrency 32
  dsbs teach cqa --split test --source_dir DATA/cqa --show_prompt --index 3

Writes OUT/<task>_<split>.jsonl (one record per input, in input order), OUT/<task>_<split>.stats.json
and, for the openai backend, the request cache OUT/cache/ that makes a rerun resume.
The work is `dsbs_jax.teacher.run.teach` (`prompt_for` with --show_prompt).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from dsbs_jax.teacher import run as teach_lib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dsbs teach`."""
    parser.add_argument("task", help="task card name (cqa, svamp, esnli, anli, ...) or a card YAML")
    parser.add_argument("--split", default="train", help="train, valid/validation or test")
    parser.add_argument(
        "--source_dir",
        help="folder with the card's gold files (default: $DSBS_DATA_DIR/<task>)",
    )
    parser.add_argument("--inputs", help="a JSONL of inputs (the card's fields) instead")
    parser.add_argument("--limit", type=int, help="only the first N inputs")
    parser.add_argument("--out", default="out/teach", help="output folder (default out/teach)")
    parser.add_argument(
        "--backend",
        choices=teach_lib.BACKENDS,
        help="default: simulated for the built-in task, files otherwise",
    )
    parser.add_argument(
        "--exemplars", help="few-shot exemplars (JSONL or YAML) instead of the card's"
    )
    parser.add_argument("--show_prompt", action="store_true", help="print one input's prompt, exit")
    parser.add_argument("--index", type=int, default=0, help="which input --show_prompt shows")

    g = parser.add_argument_group("openai backend")
    g.add_argument(
        "--base_url", default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    )
    g.add_argument("--model", help="model name sent to the server")
    g.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    g.add_argument(
        "--api_key_env", default="OPENAI_API_KEY", help="environment variable with the key"
    )
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--max_retries", type=int, default=6)
    g.add_argument("--retry_base_delay", type=float, default=1.0, help="backoff base, seconds")
    g.add_argument("--retry_max_delay", type=float, default=60.0, help="backoff cap, seconds")

    s = parser.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, help="default 0, or 0.7 when --n > 1")
    s.add_argument("--max_tokens", type=int, default=256)
    s.add_argument(
        "--stop", action="append", help="stop sequence (repeat; default: the card's cut)"
    )
    s.add_argument("--n", type=int, default=1, help="samples per input")
    s.add_argument("--top_p", type=float)
    s.add_argument("--seed", type=int, help="sampling seed (sent to the server; seeds `simulated`)")
    s.add_argument(
        "--self_consistency", action="store_true", help="majority label over --n samples"
    )

    f = parser.add_argument_group("files backend")
    f.add_argument(
        "--teacher_file",
        help="JSONL of {id, raw} or {<fields>, raw} (default: the "
        "released llm/<split>_CoT_*.json, or raw in --inputs)",
    )

    p = parser.add_argument_group("progress")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--progress_every", type=float, default=10.0, help="seconds between plain lines")


def run(args: argparse.Namespace) -> int:
    """Runs stage 1 for one task and split."""
    selection = teach_lib.InputSelection(args.split, args.inputs, args.source_dir, args.limit)
    if args.show_prompt:
        print(teach_lib.prompt_for(args.task, selection, args.index, args.exemplars))
        return 0
    openai = teach_lib.OpenAISettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(teach_lib.OpenAISettings)}
    )
    sampling = teach_lib.Sampling(
        temperature=args.temperature, max_tokens=args.max_tokens,
        stop=tuple(args.stop) if args.stop else None, n=args.n, top_p=args.top_p,
        seed=args.seed, self_consistency=args.self_consistency,
    )  # fmt: skip
    result = teach_lib.teach(
        args.task, selection, args.out, backend=args.backend, exemplars=args.exemplars,
        teacher_file=args.teacher_file, openai=openai, sampling=sampling,
        progress=not args.no_progress, progress_every=args.progress_every,
    )  # fmt: skip
    print(result.summary())
    if result.stats.failed:
        print(f"teach: {result.stats.failed} inputs got no answer; run again to retry only those")
        return 1
    return 0
