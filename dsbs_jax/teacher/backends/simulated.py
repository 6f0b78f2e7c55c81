"""The simulated teacher of the built-in task: a thin adapter over `dsbs_jax.builtin.arith`.

`simulate_teacher(fields, rng)` writes a raw chain-of-thought continuation in an LLM's style
(with an LLM's slips); its text goes through the same parser as a real teacher's. Each sample's
random generator is seeded from (seed, input id, sample number), so a rerun gives the same text.
"""

from __future__ import annotations

import random

from dsbs_jax.builtin.arith import simulate_teacher
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.errors import UserError
from dsbs_jax.teacher.backends.base import Completion, Request, SamplingParams


class SimulatedBackend:
    """Raw CoT text from the built-in task's simulated teacher."""

    name = "simulated"
    cacheable = False
    concurrency = 1

    def __init__(self, card: TaskCard, seed: int = 0):
        if card.reader != "builtin":
            raise UserError(
                f"--backend simulated works on the built-in task only; card {card.name!r} "
                f"has reader {card.reader!r}"
            )
        self.seed = seed
        self.model = f"simulated-{card.name}"

    def complete(self, request: Request, params: SamplingParams) -> Completion:
        texts = []
        for k in range(params.n):
            rng = random.Random(f"{self.seed}:{request.id}:{k}")
            texts.append(str(simulate_teacher(dict(request.fields), rng)))
        return Completion(texts=texts, finish_reasons=["stop"] * len(texts))

    def close(self) -> None:
        pass
