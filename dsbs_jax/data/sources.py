"""Readers that turn a dataset on disk into records.

- `read_released`: the paper's released layout, gold JSON lines `<file>` plus teacher outputs
  `llm/<split>_CoT_<i>.json` (JSON arrays of raw continuations, aligned by order, files taken in
  numeric order of <i>).
- `read_jsonl`: a user's own data, one JSON object per line with the card's fields and,
  optionally, `rationale` and `teacher_label` (already parsed) or `raw` (parsed here).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.parse import parse_output
from dsbs_jax.errors import UserError, located
from dsbs_jax.records import EMPTY_RATIONALE, NO_TEACHER, OK, UNKNOWN_LABEL, Record, iter_jsonl

_COT_FILE = re.compile(r"^(?P<split>.+)_CoT_(?P<index>\d+)\.json$")


def released_splits(card: TaskCard, source_dir: os.PathLike | str) -> list[str]:
    """The released split names (train, valid, test) whose gold file exists in source_dir.

    A gold file that is a link counts even when it leads nowhere (dangling, or a loop): reading
    it then fails with one line naming it, instead of the split being skipped without a word.
    """
    _check_dir(source_dir)
    root = pathlib.Path(source_dir)
    return [s for s, f in card.gold_files.items() if (root / f).exists() or (root / f).is_symlink()]


def _check_dir(source_dir: os.PathLike | str) -> None:
    if not os.path.isdir(source_dir):
        raise UserError(f"{source_dir}: no such directory")


def teacher_files(source_dir: os.PathLike | str, split: str) -> list[pathlib.Path]:
    """`llm/<split>_CoT_<i>.json` in numeric order of i (so _CoT_10 comes after _CoT_9)."""
    llm = pathlib.Path(source_dir) / "llm"
    if not llm.is_dir():
        return []
    found = []
    for p in llm.iterdir():
        m = _COT_FILE.match(p.name)
        if m and m.group("split") == split:
            found.append((int(m.group("index")), p))
    return [p for _, p in sorted(found)]


def read_teacher_outputs(files: list[pathlib.Path]) -> list[str]:
    """Concatenates the JSON string arrays of the teacher files, in order."""
    outputs: list[str] = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise located(path, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of strings")
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise UserError(f"{path}: item {i}: expected a string, got {type(item).__name__}")
        outputs.extend(data)
    return outputs


def record_from_fields(
    card: TaskCard, fields: dict[str, Any], rid: str, path: Any, line: int | None
) -> Record:
    """A record with rendered input and gold label; errors name path, line and field."""
    for name in card.fields:
        if name not in fields:
            raise located(path, line, "missing", field=name)
    try:
        text = card.render_input(fields)
    except KeyError as e:
        raise located(path, line, "missing (used by the input template)", field=e.args[0]) from None
    try:
        gold = card.gold_label(fields)
    except ValueError as e:
        raise located(path, line, str(e), field=card.label_field) from None
    return Record(id=rid, input=text, fields=fields, gold_label=gold)


def attach_teacher(record: Record, raw: str | None, card: TaskCard) -> Record:
    """Parses a raw teacher continuation into the record (status NO_TEACHER when raw is None)."""
    record.raw = raw
    if raw is None:
        record.status = NO_TEACHER
        return record
    rationale, label, status = parse_output(raw, card.parse)
    record.rationale, record.teacher_label, record.status = rationale or None, label or None, status
    _check_label_name(record, card)
    return record


def _check_label_name(record: Record, card: TaskCard) -> None:
    """A teacher label outside the card's label names is not ok (it is kept, and counted)."""
    if record.status == OK and card.label_names and record.teacher_label not in card.label_names:
        record.status = UNKNOWN_LABEL


def read_released(
    card: TaskCard, source_dir: os.PathLike | str, split: str, require_teacher: bool = True
) -> list[Record]:
    """Records of one released split (train, valid or test), teacher outputs attached."""
    _check_dir(source_dir)
    if split not in card.gold_files:
        raise UserError(
            f"{card.name} has no split {split!r}; released splits: {', '.join(card.gold_files)}"
        )
    gold_path = pathlib.Path(source_dir) / card.gold_files[split]
    records = []
    for lineno, obj in iter_jsonl(gold_path):
        if not isinstance(obj, dict):
            raise located(gold_path, lineno, "expected a JSON object")
        rid = str(obj[card.id_field]) if card.id_field and card.id_field in obj else None
        rid = rid or f"{card.name}-{split}-{len(records):06d}"
        records.append(record_from_fields(card, obj, rid, gold_path, lineno))
    files = teacher_files(source_dir, split)
    if not files:
        if require_teacher:
            raise UserError(
                f"{pathlib.Path(source_dir) / 'llm'}: no teacher files {split}_CoT_<i>.json "
                f"for the {len(records)} records of {gold_path.name}"
            )
        return records
    outputs = read_teacher_outputs(files)
    if len(outputs) < len(records):
        raise UserError(
            f"{files[-1].parent}/{split}_CoT_*.json: {len(outputs)} teacher outputs in "
            f"{len(files)} files, but {gold_path} has {len(records)} records"
        )
    if len(outputs) > len(records):
        raise UserError(
            f"{files[-1].parent}/{split}_CoT_*.json: {len(outputs)} teacher outputs, more than "
            f"the {len(records)} records of {gold_path}"
        )
    return [attach_teacher(r, raw, card) for r, raw in zip(records, outputs)]


def read_jsonl(card: TaskCard, path: os.PathLike | str, split: str = "train") -> list[Record]:
    """A user's JSONL: the card's fields, plus optional `raw` or `rationale` + `teacher_label`."""
    records = []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise located(path, lineno, "expected a JSON object")
        rid = obj.get(card.id_field) if card.id_field else obj.get("id")
        rid = str(rid) if rid is not None else f"{card.name}-{split}-{len(records):06d}"
        fields = {k: v for k, v in obj.items() if k not in ("raw", "rationale", "teacher_label")}
        r = record_from_fields(card, fields, rid, path, lineno)
        if obj.get("raw") is not None:
            attach_teacher(r, str(obj["raw"]), card)
        elif obj.get("teacher_label") is not None:
            r.teacher_label, r.rationale = str(obj["teacher_label"]), obj.get("rationale")
            r.status = OK if (r.rationale or "").strip() else EMPTY_RATIONALE
            _check_label_name(r, card)
        records.append(r)
    return records
