"""Aggregating runs over seeds (mean and standard error) and writing markdown tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from dsbs_jax.report.results import RunResult

METHOD_NAMES = {
    "finetune": "fine-tuning (gold labels)",
    "distill": "distillation (teacher labels)",
    "distill_matched": "distillation, compute-matched (2x steps)",
    "dsbs": "distilling step-by-step",
}
METRICS = {
    "accuracy": "direct answer (`predict:`)",
    "rationale_accuracy": "rationale, then its answer (`explain:`)",
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One method at one data size: mean and standard error (%) over n seeds."""

    mean: float
    stderr: float | None
    n: int

    def format(self, digits: int = 1) -> str:
        if self.stderr is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.stderr:.{digits}f}"


def mean_stderr(values: Sequence[float]) -> Cell:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); None if n < 2)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Cell(mean, None, n)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Cell(mean, math.sqrt(var / n), n)


def aggregate(results: Iterable[RunResult], metric: str = "accuracy") -> dict[str, dict[int, Cell]]:
    """{method: {train_examples: Cell}} over the runs that have the metric."""
    values: dict[str, dict[int, list[float]]] = {}
    for r in results:
        v = getattr(r, metric)
        if v is None:
            continue
        values.setdefault(r.method, {}).setdefault(r.train_examples, []).append(float(v))
    return {m: {n: mean_stderr(vs) for n, vs in sorted(by_n.items())} for m, by_n in values.items()}


def method_order(methods: Iterable[str]) -> list[str]:
    """Known methods in a fixed order (baselines first), then any others by name."""
    known = [m for m in METHOD_NAMES if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def fractions_by_size(results: Iterable[RunResult]) -> dict[int, float]:
    """{train_examples: fraction (%)} as the runs recorded them."""
    return {r.train_examples: r.fraction for r in results}


def markdown_table(results: Sequence[RunResult], metric: str = "accuracy", digits: int = 1) -> str:
    """A markdown table: one row per method, one column per data size, `mean ± stderr` (%).

    The header gives each column's number of training examples and its share of the training
    set; the last column says how many seeds each row averages.
    """
    cells = aggregate(results, metric)
    if not cells:
        return ""
    sizes = sorted({n for by_n in cells.values() for n in by_n})
    fractions = fractions_by_size(results)
    head = ["method"] + [f"{n} ex ({fractions.get(n, 0):g}%)" for n in sizes] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in method_order(cells):
        row = [METHOD_NAMES.get(m, m)]
        seeds = set()
        for n in sizes:
            c = cells[m].get(n)
            row.append(c.format(digits) if c else "–")
            if c:
                seeds.add(c.n)
        row.append("/".join(str(s) for s in sorted(seeds)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def separation(a: Cell, b: Cell) -> tuple[float, float | None]:
    """(a's mean minus b's, that difference in standard errors of the difference: the two
    seeds' sets are independent, so its error is sqrt(se_a^2 + se_b^2); None without errors)."""
    diff = a.mean - b.mean
    if a.stderr is None or b.stderr is None:
        return diff, None
    se = math.sqrt(a.stderr**2 + b.stderr**2)
    return diff, (diff / se if se > 0 else None)


def separation_markdown(
    results: Sequence[RunResult], method: str = "dsbs", metric: str = "accuracy"
) -> str:
    """A markdown table: `method` minus each other method at each data size, in points and in
    standard errors of the difference ("" when `method` or no other method ran)."""
    cells = aggregate(results, metric)
    if method not in cells or len(cells) < 2:
        return ""
    sizes = sorted(cells[method])
    head = [f"{METHOD_NAMES.get(method, method)} minus"] + [f"{n} ex" for n in sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for other in method_order(cells):
        if other == method:
            continue
        row = [METHOD_NAMES.get(other, other)]
        for n in sizes:
            if n not in cells[other]:
                row.append("–")
                continue
            diff, k = separation(cells[method][n], cells[other][n])
            row.append(f"{diff:+.1f}" + (f" ({k:+.1f} s.e.)" if k is not None else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
