"""Task cards: one YAML file per dataset says everything dataset-specific.

A card names the source fields, how to render the input, where the label is, how to parse a
teacher's raw continuation, which metric scores it, and the few-shot exemplars of its prompt.
A user's own dataset is one new card (see `load_card`), no new code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import string
from typing import Any

import yaml

from dsbs_jax.errors import UserError

BUILTIN_CARD_DIR = pathlib.Path(__file__).resolve().parents[1] / "tasks" / "cards"
LABEL_KINDS = ("choice", "parenthesised", "text", "strip_period")
METRICS = ("accuracy", "equation_value")
# A TFDS dataset name: it becomes folder and task names, so it can never name a path.
CARD_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class ParseRule:
    """How a teacher's raw continuation becomes (rationale, label).

    cut: the continuation is cut at the first occurrence of this text (the next few-shot item).
    marker: the text that separates the rationale from the answer.
    label: how to read the answer after the marker: `choice` (text after "(x) "), `parenthesised`
      (the outermost parenthesised expression), `text` (the first line), `strip_period` (the text
      without its final period).
    marker_once: the marker must occur exactly once (as the released code's `split` unpacking).
    """

    cut: str
    marker: str
    label: str
    marker_once: bool = True


@dataclasses.dataclass(frozen=True)
class TaskCard:
    """Everything dataset-specific about one task family."""

    name: str
    description: str
    input_template: str
    label_field: str
    parse: ParseRule
    metric: str = "accuracy"
    reader: str = "released"  # released | jsonl | builtin
    id_field: str | None = None
    label_names: tuple[str, ...] | None = None  # gold label index -> text
    gold_files: dict[str, str] = dataclasses.field(default_factory=dict)  # released split -> file
    fields: tuple[str, ...] = ()  # source fields every gold record must have
    splits: dict[str, str] = dataclasses.field(default_factory=dict)  # ours -> released
    validation_fraction: float = 0.0  # > 0: validation carved from train (seed 0)
    prompt_instruction: str = ""
    prompt_template: str = "Q: {input}\nA: {rationale} So the answer is {answer}."
    exemplars: tuple[dict[str, Any], ...] = ()
    feature_lengths: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 512, "targets": 256}
    )
    path: str = ""

    def released_split(self, split: str) -> str | None:
        """The released split name for one of ours or a released one (`valid` and `validation`
        both name validation, for every card); None if the card knows neither."""
        if split in self.gold_files:
            return split
        mapped = self.splits.get(split)
        if mapped is None and split in ("valid", "validation"):
            mapped = self.splits.get("validation") or "valid"
        return mapped

    def render_input(self, fields: dict[str, Any]) -> str:
        """Renders the model input from source fields; lists render as `(a) x` lines."""
        values = {}
        for _, name, _, _ in string.Formatter().parse(self.input_template):
            if name is None:
                continue
            value = fields[name]
            if isinstance(value, (list, tuple)):
                value = "\n".join(f"({chr(ord('a') + i)}) {v}" for i, v in enumerate(value))
            values[name] = value
        return self.input_template.format(**values)

    def gold_label(self, fields: dict[str, Any]) -> str | None:
        """The gold label as text (mapping indices through `label_names`)."""
        value = fields.get(self.label_field)
        if value is None:
            return None
        if self.label_names is not None and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(self.label_names):
                raise ValueError(f"label index {value} out of range 0..{len(self.label_names) - 1}")
            return self.label_names[value]
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"label is {value}, expected text or a number")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"label must be text or a number, got {type(value).__name__}")
        if self.label_names is not None and str(value) not in self.label_names:
            raise ValueError(
                f"label {value!r} is not one of {', '.join(self.label_names)} (or their index)"
            )
        return str(value)


def _card_from_dict(d: dict[str, Any], path: str) -> TaskCard:
    try:
        parse = d.pop("parse")
        if not isinstance(parse, dict):
            raise UserError(f"{path}: field 'parse': expected a mapping")
        rule = ParseRule(**parse)
    except TypeError as e:
        raise UserError(f"{path}: field 'parse': {e}") from None
    except KeyError:
        raise UserError(f"{path}: field 'parse': missing") from None
    for name in ("cut", "marker"):
        value = getattr(rule, name)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path}: field 'parse.{name}': must be non-empty text, got {value!r}")
    if rule.label not in LABEL_KINDS:
        raise UserError(f"{path}: field 'parse.label': {rule.label!r} is not one of {LABEL_KINDS}")
    if d.get("metric", "accuracy") not in METRICS:
        raise UserError(f"{path}: field 'metric': {d['metric']!r} is not one of {METRICS}")
    for key in ("label_names", "fields", "exemplars"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    known = {f.name for f in dataclasses.fields(TaskCard)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{path}: field '{unknown[0]}': unknown card field")
    missing = [n for n in ("name", "description", "input_template", "label_field") if n not in d]
    if missing:
        raise UserError(f"{path}: field '{missing[0]}': missing")
    name = d["name"]
    if not isinstance(name, str) or not CARD_NAME.fullmatch(name):
        # The name becomes folder names (the prepared dataset, the teacher's output, task names):
        # nothing in it may leave the folder it is put in.
        raise UserError(
            f"{path}: field 'name': {name!r} is not a dataset name (lower-case letters, digits "
            "and '_', starting with a letter, e.g. my_task)"
        )
    return TaskCard(parse=rule, path=path, **d)


def load_card_file(path: os.PathLike | str) -> TaskCard:
    """Reads and validates one YAML card."""
    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such card file")
    with open(path, encoding="utf-8") as f:
        try:
            d = yaml.safe_load(f)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else "?"
            raise UserError(f"{path}:{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return _card_from_dict(d, path)


def card_dirs() -> list[pathlib.Path]:
    """The built-in card folder, then each folder in $DSBS_CARDS (os.pathsep-separated)."""
    extra = [pathlib.Path(p) for p in os.environ.get("DSBS_CARDS", "").split(os.pathsep) if p]
    return [BUILTIN_CARD_DIR, *extra]


def all_cards() -> dict[str, TaskCard]:
    """Every card found, by name; a later folder's card overrides an earlier one of that name."""
    cards: dict[str, TaskCard] = {}
    for folder in card_dirs():
        for path in sorted(folder.glob("*.yaml")):
            card = load_card_file(path)
            cards[card.name] = card
    return cards


def load_card(name_or_path: str) -> TaskCard:
    """A card by dataset name (built-in or $DSBS_CARDS) or by the path of a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_card_file(name_or_path)
    cards = all_cards()
    if name_or_path not in cards:
        raise UserError(f"unknown task {name_or_path!r}; known: {', '.join(sorted(cards))}")
    return cards[name_or_path]
