"""Scoring a student's outputs against gold: the direct answer and rationale-then-answer.

The direct answer is what `predict: <input>` decodes to. Rationale-then-answer decodes
`explain: <input>` and reads the answer out of the generated rationale: first with the card's
parse rule (a student that learned to write the answer marker, as a teacher does), else, where
the rationale ends in a computation (`... 4 + 1 = 5.`), the result of its last `=`. A rationale
with neither has no answer and counts as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dsbs_jax import metrics
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.records import OK
from dsbs_jax.teacher.parse import parse_output

_LAST_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)(?!.*=)", re.DOTALL)


def answer_from_rationale(text: str, card: TaskCard) -> str:
    """The answer a generated rationale commits to ("" if it commits to none)."""
    _, label, status = parse_output(text, card.parse)
    if status == OK:
        return label
    m = _LAST_RESULT.search(text)
    return m.group(1) if m else ""


def accuracy(predictions: Sequence[str], golds: Sequence[str], metric: str = "accuracy") -> float:
    """Percentage of predictions equal to gold under the card's metric."""
    return metrics.accuracy(list(golds), list(predictions), metric)


def rationale_accuracy(
    rationales: Sequence[str], golds: Sequence[str], card: TaskCard
) -> tuple[float, list[str]]:
    """Accuracy (%) of the answers read from generated rationales, and those answers."""
    answers = [answer_from_rationale(t, card) for t in rationales]
    return accuracy(answers, golds, card.metric), answers
