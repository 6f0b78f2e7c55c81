"""Parsing a teacher's raw chain-of-thought continuation into (rationale, label, status).

One parser for every path (released files, a live LLM, the simulated teacher), driven by the
task card's ParseRule, following the rules of the paper's released code. It lives with the data
because the readers of released files (`sources`) parse too; `teacher` imports `data`, never the
other way round.
"""

from __future__ import annotations

import re

from dsbs_jax.data.cards import ParseRule
from dsbs_jax.records import EMPTY_LABEL, EMPTY_RATIONALE, NO_ANSWER, OK

_CHOICE = re.compile(r"\(.\)")
_PARENS = re.compile(r"\(.*\)")


def _read_label(after: str, kind: str) -> str:
    after = after.strip()
    if kind == "choice":
        parts = _CHOICE.split(after, maxsplit=1)
        if len(parts) < 2:
            return ""
        label = parts[1].strip()
        return label[:-1].rstrip() if label.endswith(".") else label
    if kind == "parenthesised":
        m = _PARENS.search(after)
        return m.group(0) if m else ""
    if kind == "text":
        return after.split("\n", 1)[0].strip()
    if kind == "strip_period":
        return after[:-1].strip() if after.endswith(".") else after
    raise ValueError(f"unknown label kind {kind!r}")


def parse_output(raw: str, rule: ParseRule) -> tuple[str, str, str]:
    """Returns (rationale, label, status); status is `ok` or why the output did not parse."""
    text = raw.split(rule.cut, 1)[0].rstrip() if rule.cut else raw.rstrip()
    parts = text.split(rule.marker)
    if len(parts) < 2 or (rule.marker_once and len(parts) != 2):
        return "", "", NO_ANSWER
    rationale = parts[0].strip()
    label = _read_label(parts[1], rule.label)
    if not label:
        return rationale, "", EMPTY_LABEL
    if not rationale:
        return "", label, EMPTY_RATIONALE
    return rationale, label, OK
