"""A teacher whose outputs were made already: the released layout, or a JSONL of raw outputs.

Released layout: `llm/<split>_CoT_<i>.json` aligned with the gold file (read by
`sources.read_released`), looked up by input position. JSONL: one object per line with `raw` (a
string, or a list of strings for several samples) and either `id` or the card's input fields;
looked up by id, else by the rendered input text. An input with no output gets no samples, and its
record keeps status `no_teacher`.
"""

from __future__ import annotations

import os
from typing import Any

from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.sources import read_released
from dsbs_jax.errors import UserError, located
from dsbs_jax.records import iter_jsonl
from dsbs_jax.teacher.backends.base import Completion, Request, SamplingParams


class FilesBackend:
    """Looks teacher outputs up by input id, rendered input, or position."""

    name = "files"
    cacheable = False
    concurrency = 1

    def __init__(
        self,
        card: TaskCard,
        by_index: list[list[str] | None] | None = None,
        by_key: dict[str, list[str]] | None = None,
        model: str = "files",
        source: str = "the teacher files",
    ):
        self.card = card
        self.source = source
        self.model = model
        self._by_index = by_index
        self._by_key = by_key or {}

    @classmethod
    def from_released(
        cls, card: TaskCard, source_dir: os.PathLike | str, split: str
    ) -> FilesBackend:
        """Outputs of the released layout, aligned with the gold records of the split."""
        records = read_released(card, source_dir, split, require_teacher=True)
        by_index = [[r.raw] if r.raw is not None else None for r in records]
        return cls(card, by_index=by_index, source=f"{source_dir}/llm/{split}_CoT_*.json")

    @classmethod
    def from_jsonl(cls, card: TaskCard, path: os.PathLike | str) -> FilesBackend:
        """Outputs from a JSONL file of {id, raw} or {<input fields>, raw}."""
        by_key: dict[str, list[str]] = {}
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj, dict):
                raise located(path, lineno, "expected a JSON object")
            raw = obj.get("raw")
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
                raise located(path, lineno, "expected a string or a list of strings", field="raw")
            key = _key(card, obj, path, lineno)
            if key in by_key:
                raise located(path, lineno, "a second output for the same input", field="raw")
            by_key[key] = raw
        if not by_key:
            raise UserError(f"{path}: no teacher outputs")
        return cls(card, by_key=by_key, source=os.fspath(path))

    def _texts(self, index: int, rid: str, fields: dict[str, Any]) -> list[str] | None:
        if self._by_key:
            texts = self._by_key.get("id:" + rid)
            if texts is None:
                texts = self._by_key.get("input:" + self.card.render_input(fields))
            return texts
        if self._by_index is not None and index < len(self._by_index):
            return self._by_index[index]
        return None

    def matched(self, inputs: list) -> int:
        """How many of `inputs` (records, in order) have an output here."""
        return sum(self._texts(i, r.id, r.fields) is not None for i, r in enumerate(inputs))

    def complete(self, request: Request, params: SamplingParams) -> Completion:
        texts = self._texts(request.index, request.id, request.fields)
        return Completion(texts=list(texts or [])[: params.n])

    def close(self) -> None:
        pass


def _key(card: TaskCard, obj: dict[str, Any], path: Any, lineno: int) -> str:
    rid = obj.get(card.id_field) if card.id_field else None
    rid = rid if rid is not None else obj.get("id")
    if rid is not None:
        return f"id:{rid}"
    try:
        return "input:" + card.render_input(obj)
    except KeyError as e:
        raise located(
            path,
            lineno,
            "missing (needed to match the output to an input; or give id)",
            field=e.args[0],
        ) from None
