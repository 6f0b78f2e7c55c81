"""Stage 1: ask the teacher about every input and keep its rationale and label, resumably.

The path of one input: prompt (few-shot CoT from the card) -> cache key (prompt, model, endpoint,
sampling params) -> the cache, or the backend (up to `concurrency` requests in flight) -> the
answer is stored in the cache first, then its record is appended to `<records>.partial`.
A run that is killed loses nothing it was answered: the next run finds those answers in the cache,
asks only for the rest (each distinct prompt once), and finally writes the records file (through
a temporary name and a rename) with exactly one record per input, in input order, and removes
the partial file. The records file is only ever whole: a run that fails (a full disk, a kill)
leaves the previous one, if any, as it was.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from dsbs_jax import atomic
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.sources import attach_teacher
from dsbs_jax.metrics import score_teacher
from dsbs_jax.records import OK, Record, append_record, write_records
from dsbs_jax.teacher.backends.base import (
    Backend,
    Completion,
    Request,
    RequestFailed,
    SamplingParams,
)
from dsbs_jax.teacher.cache import RequestCache, request_key
from dsbs_jax.teacher.consistency import majority
from dsbs_jax.teacher.prompts import build_prompt


@dataclasses.dataclass
class Stats:
    """What a run did and what the teacher got right."""

    inputs: int = 0
    unique_prompts: int = 0
    from_cache: int = 0  # distinct prompts answered from the cache
    requested: int = 0  # distinct prompts sent to the backend in this run
    failed: int = 0  # inputs whose request failed after its retries
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    prompt_tokens: int = 0  # spent in this run
    completion_tokens: int = 0
    truncated: int = 0  # samples that stopped at the token limit (finish_reason length)
    retries: int = 0
    with_gold: int = 0  # inputs whose gold label the card's metric can read
    correct: int = 0
    unreadable_gold: int = 0  # gold labels the metric cannot read: left out of the accuracy
    sc_agreement: float | None = None  # self-consistency: mean share of votes for the majority
    seconds: float = 0.0

    @property
    def teacher_accuracy(self) -> float | None:
        """Teacher label accuracy (%) over inputs with a gold label; failures count as wrong."""
        return 100.0 * self.correct / self.with_gold if self.with_gold else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"teacher_accuracy": self.teacher_accuracy}


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise: done, rate, ETA, failures, tokens."""

    def __init__(self, total: int, done: int, enabled: bool = True, every: float = 10.0):
        self.total, self.done, self.start_done = total, done, done
        self.parse_failures = 0
        self.tokens = 0
        self.enabled = enabled
        self.every = every
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="input", dynamic_ncols=True)

    def update(self, n: int, parse_failures: int, tokens: int) -> None:
        self.done += n
        self.parse_failures += parse_failures
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(parse_fail=self.parse_failures, tokens=self.tokens, refresh=False)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(self.line(), flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        left = self.total - self.done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"teach: {self.done}/{self.total} ({pct:.1f}%) {rate:.1f} inputs/s ETA {eta} "
            f"parse failures {self.parse_failures} tokens {self.tokens:,}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.start_done:
            print(self.line(), flush=True)


def _record(card: TaskCard, source: Record, completion: Completion | None, sc: bool) -> Record:
    rec = Record(
        id=source.id, input=source.input, fields=source.fields, gold_label=source.gold_label
    )
    if completion is None or not completion.texts:
        return rec
    chosen = majority(completion.texts, card).chosen if sc else 0
    return attach_teacher(rec, completion.texts[chosen], card)


def extract(
    card: TaskCard,
    inputs: list[Record],
    backend: Backend,
    params: SamplingParams,
    out_path: os.PathLike | str,
    cache_dir: os.PathLike | str | None = None,
    exemplars: tuple[dict[str, Any], ...] | None = None,
    self_consistency: bool = False,
    progress: bool = True,
    progress_every: float = 10.0,
    on_record: Callable[[Record], None] | None = None,
) -> tuple[list[Record], Stats]:
    """Runs the teacher over inputs; appends records to `<out_path>.partial` as they come, then
    writes `out_path` whole, in input order."""
    t0 = time.monotonic()
    stats = Stats(inputs=len(inputs))
    requests = [
        Request(i, r.id, r.fields, build_prompt(card, r.fields, exemplars))
        for i, r in enumerate(inputs)
    ]
    endpoint = getattr(backend, "endpoint", backend.name)
    if backend.cacheable:  # one request per distinct prompt
        keys = [request_key(q.prompt, backend.model, endpoint, params.key()) for q in requests]
    else:  # outputs looked up or simulated per input
        keys = [f"input:{i}" for i in range(len(requests))]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    stats.unique_prompts = len(groups)

    cache = RequestCache(cache_dir) if backend.cacheable and cache_dir is not None else None
    answers: dict[str, Completion] = {}
    try:
        if cache is not None:
            for key in groups:
                value = cache.get(key)
                if value is not None:
                    answers[key] = Completion.from_json(value)
        stats.from_cache = len(answers)
        done_first = [
            _record(card, inputs[i], answers[k], self_consistency)
            for i, k in enumerate(keys)
            if k in answers
        ]
        partial = partial_path(out_path)
        write_records(partial, done_first)
        bar = Progress(len(inputs), len(done_first), progress, progress_every)
        pending = [k for k in groups if k not in answers]
        with open(partial, "a", encoding="utf-8") as out:

            def finish(key: str, completion: Completion | None) -> None:
                if completion is not None:
                    answers[key] = completion
                    if cache is not None:
                        cache.put(key, completion.to_json())  # the answer is safe before its record
                    stats.requested += 1
                    stats.prompt_tokens += completion.prompt_tokens
                    stats.completion_tokens += completion.completion_tokens
                    stats.truncated += completion.truncated
                else:
                    stats.failed += len(groups[key])
                fails = 0
                for i in groups[key]:
                    rec = _record(card, inputs[i], completion, self_consistency)
                    fails += rec.status != OK
                    append_record(out, rec)
                    if on_record is not None:
                        on_record(rec)
                spent = completion.prompt_tokens + completion.completion_tokens if completion else 0
                bar.update(len(groups[key]), fails, spent)

            def ask(key: str) -> Completion | None:
                try:
                    return backend.complete(requests[groups[key][0]], params)
                except RequestFailed as e:
                    print(f"teach: input {requests[groups[key][0]].id}: {e}", file=sys.stderr)
                    return None

            if backend.concurrency <= 1:
                for key in pending:
                    finish(key, ask(key))
            else:
                pool = cf.ThreadPoolExecutor(max_workers=backend.concurrency)
                try:
                    futures = {pool.submit(ask, key): key for key in pending}
                    for fut in cf.as_completed(futures):
                        finish(futures[fut], fut.result())
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    finally:
        if cache is not None:
            cache.close()
        backend.close()

    records = [_record(card, r, answers.get(k), self_consistency) for r, k in zip(inputs, keys)]
    write_records(out_path, records)
    os.remove(partial)
    _score(card, records, answers, keys, self_consistency, stats)
    stats.retries = getattr(backend, "retries", 0)
    stats.seconds = time.monotonic() - t0
    return records, stats


def partial_path(out_path: os.PathLike | str) -> str:
    """Where a running `teach` appends records as answers arrive: `<records>.partial`."""
    return os.fspath(out_path) + ".partial"


def _score(
    card: TaskCard,
    records: list[Record],
    answers: dict[str, Completion],
    keys: list[str],
    sc: bool,
    stats: Stats,
) -> None:
    stats.statuses = dict(Counter(r.status for r in records))
    score = score_teacher(((r.teacher_label, r.gold_label) for r in records), card.metric)
    stats.with_gold, stats.correct = score.scored, score.correct
    stats.unreadable_gold = score.unreadable_gold
    if sc:
        shares = []
        for k in keys:
            c = answers.get(k)
            if c is not None and c.texts:
                v = majority(c.texts, card)
                if v.voters:
                    shares.append(v.votes / len(c.texts))
        stats.sc_agreement = sum(shares) / len(shares) if shares else None


def write_stats(path: os.PathLike | str, stats: Stats, extra: dict[str, Any]) -> None:
    """Writes the run's statistics (and its settings) as JSON beside the records."""
    with atomic.open_atomic(path) as f:
        json.dump(extra | stats.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
