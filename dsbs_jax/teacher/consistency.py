"""Self-consistency (Wang et al., 2023): several samples per input, the majority label wins.

Labels vote after `metrics.normalize`; for the `equation_value` metric, equations vote by value, so
`(84 / 2)` and `( 84.0 / 2.0 )` agree. Only samples that parsed (status ok) vote. The kept
sample is the first one whose label agrees with the majority; ties go to the label seen first.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.parse import parse_output
from dsbs_jax.metrics import EquationError, evaluate_equation, normalize
from dsbs_jax.records import OK


def vote_key(label: str, metric: str) -> str:
    """What a label votes as: its value for equations, else its normalised text."""
    if metric == "equation_value":
        try:
            return f"={evaluate_equation(label):.9g}"
        except EquationError:
            pass
    return normalize(label)


@dataclasses.dataclass(frozen=True)
class Vote:
    """The outcome of one input's vote."""

    chosen: int  # the index of the kept sample
    votes: int  # how many parsed samples agree with the majority
    voters: int  # how many samples parsed (status ok)


def majority(texts: list[str], card: TaskCard) -> Vote:
    """Parses every sample and picks the first one that carries the majority label."""
    keys: list[str | None] = []
    for text in texts:
        _, label, status = parse_output(text, card.parse)
        keys.append(vote_key(label, card.metric) if status == OK else None)
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return Vote(chosen=0, votes=0, voters=0)
    winner, votes = counts.most_common(1)[0]
    return Vote(chosen=keys.index(winner), votes=votes, voters=sum(counts.values()))
