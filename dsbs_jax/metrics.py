"""Metrics: accuracy on normalised text, and equation answers compared by value.

Equations (svamp labels such as `( 84.0 / 2.0 )`) are evaluated by a small recursive-descent
parser over numbers, + - * /, unary minus and parentheses. Python's `eval` is never used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

_SPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|(.))")


def normalize(text: str | None) -> str:
    """Collapses whitespace and drops one final period. Case is kept, as in the paper."""
    text = _SPACE.sub(" ", (text or "").strip())
    return text[:-1].rstrip() if text.endswith(".") else text


class EquationError(ValueError):
    """The text is not an arithmetic expression over numbers, + - * / and parentheses."""


def _tokens(text: str) -> list[str]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace remains
            break
        number, other = m.groups()
        if number is not None:
            out.append(number)
        elif other in "+-*/()":
            out.append(other)
        elif not other.isspace():
            raise EquationError(f"unexpected character {other!r}")
        pos = m.end()
    return out


def evaluate_equation(text: str) -> float:
    """The value of an arithmetic expression; raises EquationError if it is not one."""
    tokens = _tokens(text)
    if not tokens:
        raise EquationError("empty expression")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise EquationError("unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def expr(depth: int) -> float:
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth: int) -> float:
        value = factor(depth)
        while peek() in ("*", "/"):
            op = take()
            rhs = factor(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise EquationError("division by zero")
            else:
                value /= rhs
        return value

    def factor(depth: int) -> float:
        if depth > 100:
            raise EquationError("expression nested too deeply")
        tok = take()
        if tok == "-":
            return -factor(depth + 1)
        if tok == "+":
            return factor(depth + 1)
        if tok == "(":
            value = expr(depth + 1)
            if take() != ")":
                raise EquationError("missing ')'")
            return value
        if tok in "*/)":
            raise EquationError(f"unexpected {tok!r}")
        return float(tok)

    value = expr(0)
    if pos != len(tokens):
        raise EquationError(f"unexpected {tokens[pos]!r}")
    if not math.isfinite(value):
        raise EquationError("value is not finite")
    return value


def equations_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two equations have the same value; anything that does not evaluate is unequal."""
    try:
        return math.isclose(
            evaluate_equation(a or ""), evaluate_equation(b or ""), rel_tol=rel_tol, abs_tol=1e-9
        )
    except EquationError:
        return False


def label_correct(prediction: str | None, target: str | None, metric: str = "accuracy") -> bool:
    """One prediction scored by the card's metric (`accuracy` or `equation_value`)."""
    if metric == "equation_value":
        return equations_equal(prediction, target)
    return normalize(prediction) == normalize(target)


def accuracy(targets: Sequence[str], predictions: Sequence[str], metric: str = "accuracy") -> float:
    """Percentage of predictions that match their targets under the metric."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        return 0.0
    return (
        100.0
        * sum(label_correct(p, t, metric) for t, p in zip(targets, predictions))
        / len(targets)
    )


def gold_readable(gold: str | None, metric: str = "accuracy") -> bool:
    """Whether the metric can score against this gold label (an equation must evaluate)."""
    if not normalize(gold):
        return False
    if metric == "equation_value":
        try:
            evaluate_equation(gold or "")
        except EquationError:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class TeacherScore:
    """The teacher's labels against gold, over the records whose gold label the metric reads."""

    correct: int
    scored: int
    unreadable_gold: int  # gold labels the metric cannot read: scored neither right nor wrong

    @property
    def accuracy(self) -> float | None:
        """Percent right; a record with no teacher label (unparsed, failed) counts as wrong."""
        return 100.0 * self.correct / self.scored if self.scored else None

    def unreadable_line(self, where: str) -> str | None:
        """The line that says how many gold labels were left out, or None when none were."""
        if not self.unreadable_gold:
            return None
        return (
            f"{where}: {self.unreadable_gold} gold label(s) the metric cannot read were left out "
            "of the teacher's accuracy"
        )


def score_teacher(
    pairs: Iterable[tuple[str | None, str | None]], metric: str = "accuracy"
) -> TeacherScore:
    """The teacher's accuracy from (teacher label, gold label) pairs; the one place it is
    computed (`dsbs stats`, `dsbs teach`, a sweep's report). Pairs without gold are skipped."""
    correct = scored = unreadable = 0
    for teacher, gold in pairs:
        if gold is None:
            continue
        if not gold_readable(gold, metric):
            unreadable += 1
            continue
        scored += 1
        correct += teacher is not None and label_correct(teacher, gold, metric)
    return TeacherScore(correct, scored, unreadable)


def seqio_metric(metric: str):
    """A seqio metric function `(targets, predictions) -> {"accuracy": %}` for a card's metric."""

    def fn(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
        return {"accuracy": accuracy(targets, predictions, metric)}

    fn.__name__ = f"{metric}_metric"
    return fn
