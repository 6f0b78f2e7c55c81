"""`dsbs teach`: stage 1, few-shot CoT rationales and labels from a teacher, resumable.

  dsbs teach svamp --split test --source_dir DATA/svamp --backend files --out out/teach
  dsbs teach cqa --split train --source_dir DATA/cqa --backend openai \
      --base_url http://localhost:8000/v1 --model M --endpoint completions --concurrency 32
  dsbs teach cqa --split test --source_dir DATA/cqa --show_prompt --index 3

Writes OUT/<task>_<split>.jsonl (one record per input, in input order), OUT/<task>_<split>.stats.json
and, for the openai backend, the request cache OUT/cache/ that makes a rerun resume.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import urllib.parse

from dsbs_jax.data.cards import TaskCard, load_card
from dsbs_jax.data.sources import read_jsonl, read_released
from dsbs_jax.errors import UserError
from dsbs_jax.records import Record
from dsbs_jax.teacher.backends.base import SamplingParams
from dsbs_jax.teacher.extract import Stats, extract, write_stats
from dsbs_jax.teacher.prompts import build_prompt, load_exemplars

BACKENDS = ("openai", "files", "simulated")


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
        choices=BACKENDS,
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


def _source_dir(card: TaskCard, args: argparse.Namespace) -> pathlib.Path:
    if args.source_dir:
        return pathlib.Path(args.source_dir)
    if os.environ.get("DSBS_DATA_DIR"):
        return pathlib.Path(os.environ["DSBS_DATA_DIR"]) / card.name
    raise UserError("--source_dir: required (or --inputs FILE, or set DSBS_DATA_DIR)")


def _released_split(card: TaskCard, split: str) -> str:
    mapped = card.released_split(split)
    if mapped in card.gold_files:
        return mapped
    if split in ("valid", "validation") and card.validation_fraction > 0:
        raise UserError(
            f"{card.name} has no released validation split; teach `train` "
            "(`dsbs prepare` carves validation from it)"
        )
    raise UserError(f"{card.name} has no split {split!r}; splits: {', '.join(card.gold_files)}")


def load_inputs(card: TaskCard, args: argparse.Namespace) -> list[Record]:
    """The inputs to teach: --inputs JSONL, or the card's gold file of the split."""
    if args.inputs:
        records = read_jsonl(card, args.inputs, args.split)
    else:
        source = _source_dir(card, args)
        split = _released_split(card, args.split)
        if card.reader == "released":
            records = read_released(card, source, split, require_teacher=False)
        else:
            path = source / card.gold_files[split]
            if not path.exists():
                raise UserError(f"{path}: no such file (the {card.name} inputs of {args.split})")
            records = read_jsonl(card, path, args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit {args.limit}: must be at least 1")
        records = records[: args.limit]
    if not records:
        raise UserError("no inputs")
    return records


def make_backend(card: TaskCard, name: str, args: argparse.Namespace):
    """The chosen backend, configured from the flags."""
    if name == "openai":
        from dsbs_jax.teacher.backends.openai import OpenAIBackend

        return OpenAIBackend(
            base_url=args.base_url,
            model=args.model,
            endpoint=args.endpoint,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.max_retries,
            retry_base_delay=args.retry_base_delay,
            retry_max_delay=args.retry_max_delay,
            seed=args.seed or 0,
        )
    if name == "files":
        from dsbs_jax.teacher.backends.files import FilesBackend

        if args.teacher_file:
            return FilesBackend.from_jsonl(card, args.teacher_file)
        if args.inputs:
            return FilesBackend.from_jsonl(card, args.inputs)
        return FilesBackend.from_released(
            card, _source_dir(card, args), _released_split(card, args.split)
        )
    from dsbs_jax.teacher.backends.simulated import SimulatedBackend

    return SimulatedBackend(card, seed=args.seed or 0)


def check_outputs_match(backend, inputs: list[Record]) -> None:
    """Teacher outputs made already must answer some of the inputs: none is an error (before
    anything is written), some is said."""
    matched = getattr(backend, "matched", None)
    if matched is None:
        return
    found = matched(inputs)
    if found == 0:
        raise UserError(
            f"{backend.source}: no output matches any of the {len(inputs)} inputs (by id, then "
            f"by input text; the first input's id is {inputs[0].id!r})"
        )
    if found < len(inputs):
        print(
            f"teach: {len(inputs) - found} of {len(inputs)} inputs have no output in "
            f"{backend.source} (status no_teacher)"
        )


def sampling_params(card: TaskCard, args: argparse.Namespace) -> SamplingParams:
    """Sampling parameters from the flags and the card (stop defaults to the card's cut)."""
    if args.n < 1:
        raise UserError(f"--n {args.n}: must be at least 1")
    if args.self_consistency and args.n < 2:
        raise UserError("--self_consistency needs --n 2 or more (e.g. --n 5)")
    if args.max_tokens < 1:
        raise UserError(f"--max_tokens {args.max_tokens}: must be at least 1")
    temperature = args.temperature
    if temperature is None:
        temperature = 0.7 if args.n > 1 else 0.0
    stop = tuple(args.stop) if args.stop else ((card.parse.cut,) if card.parse.cut else ())
    return SamplingParams(
        temperature=temperature,
        max_tokens=args.max_tokens,
        stop=stop,
        n=args.n,
        top_p=args.top_p,
        seed=args.seed if args.backend == "openai" else None,
    )


def summary(task: str, split: str, stats: Stats, records_path: pathlib.Path) -> str:
    """The final statistics, as printed."""
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats.statuses.items()))
    lines = [
        f"teach {task} {split}: {stats.inputs} inputs, {stats.unique_prompts} distinct prompts "
        f"({stats.from_cache} from the cache, {stats.requested} asked, {stats.failed} failed) "
        f"in {stats.seconds:.1f} s",
        f"  statuses: {statuses}",
        f"  tokens spent: {stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} completion;"
        f" truncated samples {stats.truncated}; retries {stats.retries}",
    ]
    if stats.sc_agreement is not None:
        lines.append(f"  self-consistency: majority share {100 * stats.sc_agreement:.1f}%")
    if stats.teacher_accuracy is not None:
        lines.append(
            f"  teacher accuracy: {stats.teacher_accuracy:.2f}% "
            f"({stats.correct}/{stats.with_gold} with gold labels)"
        )
    if stats.unreadable_gold:
        lines.append(
            f"  gold labels the metric cannot read: {stats.unreadable_gold} (left out of the "
            "teacher accuracy)"
        )
    lines.append(f"  records: {records_path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs stage 1 for one task and split."""
    card = load_card(args.task)
    args.backend = args.backend or ("simulated" if card.reader == "builtin" else "files")
    exemplars = load_exemplars(card, args.exemplars) if args.exemplars else None
    inputs = load_inputs(card, args)
    if args.show_prompt:
        if not 0 <= args.index < len(inputs):
            raise UserError(f"--index {args.index}: out of range 0..{len(inputs) - 1}")
        print(build_prompt(card, inputs[args.index].fields, exemplars))
        return 0
    params = sampling_params(card, args)
    backend = make_backend(card, args.backend, args)
    check_outputs_match(backend, inputs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / f"{card.name}_{args.split}.jsonl"
    _, stats = extract(
        card,
        inputs,
        backend,
        params,
        records_path,
        cache_dir=out / "cache",
        exemplars=exemplars,
        self_consistency=args.self_consistency,
        progress=not args.no_progress,
        progress_every=args.progress_every,
    )
    url = urllib.parse.urlsplit(args.base_url)
    settings = {
        "task": card.name,
        "split": args.split,
        "backend": args.backend,
        "model": backend.model,
        "sampling": params.key(),
        "self_consistency": args.self_consistency,
    }
    if args.backend == "openai":
        settings |= {
            "endpoint": args.endpoint,
            "base_url": f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}",
        }
    write_stats(out / f"{card.name}_{args.split}.stats.json", stats, settings)
    print(summary(card.name, args.split, stats, records_path))
    if stats.failed:
        print(f"teach: {stats.failed} inputs got no answer; run again to retry only those")
        return 1
    return 0
