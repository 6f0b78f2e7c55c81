"""Few-shot chain-of-thought prompts from a task card.

A prompt is the card's instruction (if any), then each exemplar rendered with the card's
`prompt_template` (its fields, a rationale and the answer as the teacher should write it), then the
query input rendered with the same template up to `{rationale}`, left open for the teacher.

An exemplar is a mapping `{fields: {...}, rationale: "...", answer: "..."}`; a flat mapping (the
source fields beside `rationale` and `answer`) works too where no field is itself named `answer`.
`answer` is the text the template shows, e.g. `(c) wooded area` or `(84 / 2)`.
"""

from __future__ import annotations

import json
import os
import string
from typing import Any

import yaml

from dsbs_jax.data.cards import TaskCard
from dsbs_jax.errors import UserError, located

RATIONALE = "{rationale}"
EXEMPLAR_SEPARATOR = "\n\n"


def _template_values(
    card: TaskCard, fields: dict[str, Any], rationale: str = "", answer: str = ""
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, (list, tuple)):
            value = "\n".join(f"({chr(ord('a') + i)}) {v}" for i, v in enumerate(value))
        values[name] = value
    values["input"] = card.render_input(fields)
    values["rationale"] = rationale
    values["answer"] = answer
    return values


def _format(template: str, values: dict[str, Any]) -> str:
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in values:
            raise KeyError(name)
    return template.format(**values)


def render_exemplar(card: TaskCard, exemplar: dict[str, Any]) -> str:
    """One worked exemplar: the template with its fields, rationale and answer filled in."""
    fields, rationale, answer = split_exemplar(exemplar)
    return _format(card.prompt_template, _template_values(card, fields, rationale, answer))


def exemplar_continuation(card: TaskCard, exemplar: dict[str, Any]) -> str:
    """What a teacher should write after a query's prompt: the exemplar's text from the rationale on."""
    head = query_prefix(card, split_exemplar(exemplar)[0])
    full = render_exemplar(card, exemplar)
    if not full.startswith(head):  # pragma: no cover - the template is the same on both sides
        raise ValueError("exemplar does not start with its own query prefix")
    return full[len(head) :].lstrip(" ")


def query_prefix(card: TaskCard, fields: dict[str, Any]) -> str:
    """The template rendered for one input up to `{rationale}`; trailing spaces dropped."""
    template = card.prompt_template
    if RATIONALE not in template:
        raise UserError(f"{card.path or card.name}: field 'prompt_template': has no {RATIONALE}")
    head = template.split(RATIONALE, 1)[0]
    return _format(head, _template_values(card, fields)).rstrip(" ")


def build_prompt(
    card: TaskCard, fields: dict[str, Any], exemplars: tuple[dict[str, Any], ...] | None = None
) -> str:
    """The exact few-shot prompt for one input (the card's exemplars unless others are given)."""
    exemplars = card.exemplars if exemplars is None else exemplars
    parts = []
    if card.prompt_instruction.strip():
        parts.append(card.prompt_instruction.strip())
    parts.extend(render_exemplar(card, ex) for ex in exemplars)
    try:
        parts.append(query_prefix(card, fields))
    except KeyError as e:
        raise UserError(
            f"{card.path or card.name}: field 'prompt_template': uses {{{e.args[0]}}}, "
            "which the input does not have"
        ) from None
    return EXEMPLAR_SEPARATOR.join(parts)


def split_exemplar(exemplar: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """(fields, rationale, answer) of an exemplar, nested or flat."""
    if isinstance(exemplar.get("fields"), dict):
        fields = dict(exemplar["fields"])
    else:
        fields = {k: v for k, v in exemplar.items() if k not in ("rationale", "answer")}
    return fields, str(exemplar["rationale"]), str(exemplar["answer"])


def check_exemplars(card: TaskCard, exemplars: Any, where: str) -> tuple[dict[str, Any], ...]:
    """Validates exemplars against the card's template; errors name the file and exemplar."""
    if not isinstance(exemplars, (list, tuple)):
        raise UserError(f"{where}: expected a list of exemplars")
    out = []
    for i, ex in enumerate(exemplars, start=1):
        loc = f"{where}: exemplar {i}"
        if not isinstance(ex, dict):
            raise UserError(f"{loc}: expected a mapping, got {type(ex).__name__}")
        for key in ("rationale", "answer"):
            if not isinstance(ex.get(key), (str, int, float)) or not str(ex[key]).strip():
                raise UserError(f"{loc}: field '{key}': missing or empty")
        try:
            render_exemplar(card, ex)
        except KeyError as e:
            raise UserError(
                f"{loc}: field '{e.args[0]}': missing (the card's template or input uses it)"
            ) from None
        out.append(ex)
    return tuple(out)


def load_exemplars(card: TaskCard, path: os.PathLike | str) -> tuple[dict[str, Any], ...]:
    """Exemplars from a user's file: JSONL (one per line), or YAML (a list or {exemplars: [...]})."""
    path = str(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such exemplar file")
    if path.endswith((".yaml", ".yml")):
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = mark.line + 1 if mark is not None else None
                raise located(path, line, f"invalid YAML: {getattr(e, 'problem', e)}") from None
        if isinstance(data, dict):
            data = data.get("exemplars")
        return check_exemplars(card, data, path)
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise located(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
            try:
                items.append(check_exemplars(card, [obj], f"{path}:{lineno}")[0])
            except UserError as e:
                raise UserError(str(e).replace(": exemplar 1", "", 1)) from None
    if not items:
        raise UserError(f"{path}: no exemplars")
    return tuple(items)
