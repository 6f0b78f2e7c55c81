"""The record: one distillation example, from the teacher to the student's tasks.

A record carries the source fields, the rendered input, the gold label (where known), and what
the teacher said: its raw text, the rationale and label parsed from it, and the parse status.
Records are stored as JSON lines; reading validates every line and names file, line and field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dsbs_jax import atomic
from dsbs_jax.errors import UserError, located

# Parse statuses. Only OK records feed the tasks that need teacher output.
OK = "ok"
NO_TEACHER = "no_teacher"  # no teacher output for this input (yet)
NO_ANSWER = "no_answer"  # the answer marker is missing or ambiguous
EMPTY_LABEL = "empty_label"  # the marker is there, the label after it is empty or malformed
EMPTY_RATIONALE = "empty_rationale"  # a label, but no rationale before it
UNKNOWN_LABEL = "unknown_label"  # a label that is not one of the card's label names
STATUSES = (OK, NO_TEACHER, NO_ANSWER, EMPTY_LABEL, EMPTY_RATIONALE, UNKNOWN_LABEL)


@dataclasses.dataclass
class Record:
    """One example: source fields, rendered input, gold label, and the teacher's output."""

    id: str
    input: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    gold_label: str | None = None
    teacher_label: str | None = None
    rationale: str | None = None
    raw: str | None = None
    status: str = NO_TEACHER

    @property
    def ok(self) -> bool:
        """Whether the teacher output parsed into a label and a rationale."""
        return self.status == OK

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "input": (str,),
    "fields": (dict,),
    "gold_label": (str, type(None)),
    "teacher_label": (str, type(None)),
    "rationale": (str, type(None)),
    "raw": (str, type(None)),
    "status": (str,),
}
_REQUIRED = ("id", "input")


def record_from_json(
    obj: Any, path: os.PathLike | str = "<record>", line: int | None = None
) -> Record:
    """Validates one decoded JSON object and builds a Record; errors name path, line and field."""
    if not isinstance(obj, dict):
        raise located(path, line, f"expected a JSON object, got {type(obj).__name__}")
    for name in _REQUIRED:
        if name not in obj:
            raise located(path, line, "missing", field=name)
    unknown = sorted(set(obj) - set(_FIELD_TYPES))
    if unknown:
        raise located(
            path, line, "unknown field (known: " + ", ".join(_FIELD_TYPES) + ")", field=unknown[0]
        )
    for name, value in obj.items():
        if not isinstance(value, _FIELD_TYPES[name]):
            want = " or ".join(
                "null" if t is type(None) else t.__name__ for t in _FIELD_TYPES[name]
            )
            raise located(path, line, f"expected {want}, got {type(value).__name__}", field=name)
    status = obj.get("status", NO_TEACHER)
    if status not in STATUSES:
        raise located(
            path, line, f"unknown status {status!r} (known: {', '.join(STATUSES)})", field="status"
        )
    if status == OK:  # an ok record trains on both: neither may be missing or blank
        for name in ("rationale", "teacher_label"):
            if not (obj.get(name) or "").strip():
                raise located(
                    path, line, f"missing or empty in a record with status {OK!r}", field=name
                )
    return Record(**obj)


def iter_jsonl(
    path: os.PathLike | str, open_binary: Callable[[str], Any] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yields (line number, decoded object) for each non-blank line; a bad line names itself.
    `open_binary`: how to open the file for reading bytes (e.g. `tf.io.gfile.GFile(p, "rb")` for
    GCS paths; default: a local file that must exist)."""
    if open_binary is None:
        if not os.path.exists(path):
            why = (
                "a link that leads nowhere or to itself" if os.path.islink(path) else "no such file"
            )
            raise UserError(f"{path}: {why}")
        open_binary = functools.partial(open, mode="rb")
    with open_binary(os.fspath(path)) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise located(path, lineno, f"not UTF-8 text (byte {e.start + 1})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text, parse_constant=_no_constant)
            except json.JSONDecodeError as e:
                raise located(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except ValueError as e:
                raise located(path, lineno, str(e)) from None
            yield lineno, obj


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; Python's reader takes them, we refuse them."""
    raise ValueError(f"invalid JSON: {name} is not a JSON value")


def read_records(path: os.PathLike | str) -> list[Record]:
    """Reads and validates a records JSONL file."""
    records = [record_from_json(obj, path, lineno) for lineno, obj in iter_jsonl(path)]
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            raise UserError(f"{path}: duplicate id {r.id!r} (records {seen[r.id] + 1} and {i + 1})")
        seen[r.id] = i
    return records


def write_records(path: os.PathLike | str, records: Iterable[Record]) -> int:
    """Writes records as JSON lines atomically (a temporary file, then rename); returns the count."""
    n = 0
    with atomic.open_atomic(path) as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def append_record(f, record: Record) -> None:
    """Appends one record to an open JSONL file and flushes it (for incremental writers)."""
    f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    f.flush()
