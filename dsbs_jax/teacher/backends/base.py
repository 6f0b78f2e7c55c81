"""The backend interface: a teacher answers one request with one or more raw continuations.

Every backend (an OpenAI-compatible server, files of outputs already made, the simulated teacher)
answers `complete(request, params)`; the extractor calls it from up to `concurrency` threads, so an
implementation must be thread-safe. Failures that a rerun may fix (the server down, retries spent)
raise `RequestFailed`; bad configuration raises `UserError` and stops the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the teacher samples: temperature, token budget, stop sequences, samples per input."""

    temperature: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    n: int = 1
    top_p: float | None = None
    seed: int | None = None

    def key(self) -> dict[str, Any]:
        """The fields that change the teacher's answer (part of the cache key)."""
        return dataclasses.asdict(self) | {"stop": list(self.stop)}


@dataclasses.dataclass(frozen=True)
class Request:
    """One input to ask the teacher about: its position, id, source fields and the prompt."""

    index: int
    id: str
    fields: dict[str, Any]
    prompt: str


@dataclasses.dataclass
class Completion:
    """The teacher's answer: one raw text per sample, why each stopped, and tokens spent."""

    texts: list[str]
    finish_reasons: list[str | None] = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1

    @property
    def truncated(self) -> int:
        """How many samples stopped at the token limit (finish_reason `length`)."""
        return sum(1 for r in self.finish_reasons if r == "length")

    def to_json(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "finish_reasons": self.finish_reasons,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Completion:
        return cls(
            texts=[str(t) for t in obj["texts"]],
            finish_reasons=list(obj.get("finish_reasons") or []),
            prompt_tokens=int(obj.get("prompt_tokens") or 0),
            completion_tokens=int(obj.get("completion_tokens") or 0),
            attempts=0,
        )


class RequestFailed(Exception):
    """A request that failed after its retries; the input keeps status `no_teacher` for a rerun."""


class Backend(Protocol):
    """A teacher. `cacheable` backends have their answers stored in the on-disk cache."""

    name: str
    model: str
    concurrency: int
    cacheable: bool

    def complete(self, request: Request, params: SamplingParams) -> Completion:
        """The teacher's answer to one request (thread-safe)."""
        ...

    def close(self) -> None:
        """Releases connections and files."""
        ...
