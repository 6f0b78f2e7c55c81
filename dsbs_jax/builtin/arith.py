"""The built-in task: templated multi-step arithmetic word problems, and a simulated teacher.

A problem follows one person's stock of objects through two or three events (buy, give away,
multiply, share out), worded from several templates and in several sentence orders:

    Mia has 7 shells. She finds 5 more shells. Then she gives 4 shells to Ben.
    How many shells does Mia have now?

Gold fields: `id`, `question`, `answer` (the final number as text), and the structure the
simulated teacher reasons over: `name`, `object`, `start`, `start_says` (the opening of a
rationale), `steps` (each `op`, `n`, and `says`: the event as a rationale retells it).
Every intermediate result stays in 0..max_result, divisions are exact, nothing goes negative.

`simulate_teacher` writes a raw chain-of-thought continuation as a few-shot LLM would
("Mia has 7 shells. She finds 5 more, so 7 + 5 = 12. ... The answer is 8.", often followed by the
start of a next "Q:" item), wrong about a quarter of the time with a rationale whose slip (an
arithmetic error, a misread number, a wrong operation) leads consistently to its wrong answer, and
unparseable a few percent of the time (no answer marker, truncated, the marker twice).

Splits are disjoint by construction: each problem's arithmetic (start, operations, operands) hashes
to one split, so no test question, and no test computation chain, appears in train.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random
import re
from typing import Any

from dsbs_jax import atomic

# --------------------------------------------------------------------------- difficulty


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard the problems are.

    max_number: the start and the operands of + and - are drawn from 1..max_number.
    max_factor: the operands of * and / are drawn from 2..max_factor.
    min_ops, max_ops: how many events (operations) a problem has.
    operations: which of "+-*/" may occur.
    max_result: every intermediate result stays in 0..max_result.
    distractor_prob: chance of one irrelevant sentence with a number (another person's objects).
    max_answer_share: no answer is more than this share of a split's problems (1.0: no cap). A
      small chain space leaves few test chains (the easy preset: 48), and without a cap one
      answer can be a fifth of the test split, so that a student repeating one number scores
      as if it had learned something.
    """

    max_number: int = 9
    max_factor: int = 4
    min_ops: int = 2
    max_ops: int = 3
    operations: str = "+-*/"
    max_result: int = 99
    distractor_prob: float = 0.0
    max_answer_share: float = 1.0

    def __post_init__(self) -> None:
        if self.max_number < 2 or self.max_factor < 2 or self.max_result < self.max_number:
            raise ValueError(f"difficulty out of range: {self}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops: {self}")
        if not 0 < self.max_answer_share <= 1:
            raise ValueError(f"max_answer_share must be in (0, 1]: {self}")
        if not self.operations or set(self.operations) - set("+-*/"):
            raise ValueError(f"operations must be a non-empty subset of '+-*/': {self}")


DIFFICULTIES = {
    "easy": Difficulty(max_number=6, min_ops=2, max_ops=2, operations="+-", max_answer_share=0.1),
    "default": Difficulty(),
    "hard": Difficulty(max_number=20, max_factor=5, min_ops=3, max_ops=3, distractor_prob=0.3),
}


def get_difficulty(difficulty: str | Difficulty) -> Difficulty:
    """A Difficulty from a preset name (easy, default, hard) or as given."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; known: {', '.join(DIFFICULTIES)}")
    return DIFFICULTIES[difficulty]


# --------------------------------------------------------------------------- wording

_PEOPLE = [
    ("Tom", "he", "his"),
    ("Mia", "she", "her"),
    ("Sam", "he", "his"),
    ("Lily", "she", "her"),
    ("Ben", "he", "his"),
    ("Emma", "she", "her"),
    ("Omar", "he", "his"),
    ("Nora", "she", "her"),
    ("Leo", "he", "his"),
    ("Zoe", "she", "her"),
    ("Ravi", "he", "his"),
    ("Ana", "she", "her"),
]
_OBJECTS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "coins",
    "pencils",
    "cookies",
    "cards",
    "shells",
    "balloons",
]  # singular: drop the final "s"

# Each template: (question sentence, what the rationale says about it). {S} is the subject (the
# name or the pronoun), {pos} the possessive, {pos_S} the subject's possessive ("Mia's" or "her"),
# {obj_p} the object pronoun, {o} the objects, {n} the operand, {on} the objects agreeing with {n},
# {are} "is" or "are" agreeing with {n}, {F} a friend.
_START = [
    ("{S} has {n} {on}.", "{S} has {n} {on}."),
    ("{S} starts with {n} {on}.", "{S} starts with {n} {on}."),
    ("There {are} {n} {on} in {pos_S} box.", "{S} has {n} {on}."),
    ("{S} owns {n} {on}.", "{S} has {n} {on}."),
]
_START_LAST = [
    ("At the start, {S} had {n} {on}.", "{S} has {n} {on}."),
    ("{S} had {n} {on} to begin with.", "{S} starts with {n} {on}."),
]
_STEPS = {
    "+": [
        ("{S} buys {n} more {on}.", "{S} buys {n} more"),
        ("{F} gives {obj_p} {n} more {on}.", "{F} gives {obj_p} {n} more"),
        ("{S} finds {n} more {on}.", "{S} finds {n} more"),
        ("{S} gets {n} {on} as a gift.", "{S} gets {n} as a gift"),
    ],
    "-": [
        ("{S} gives {n} {on} to {F}.", "{S} gives {n} to {F}"),
        ("{S} loses {n} {on}.", "{S} loses {n}"),
        ("{S} sells {n} of {pos} {o}.", "{S} sells {n}"),
        ("{S} uses {n} {on}.", "{S} uses {n}"),
    ],
    "*": [
        ("{S} ends up with {n} times as many {o} as before.", "{S} gets {n} times as many"),
        ("The number of {pos_S} {o} grows to {n} times what it was.", "The number grows {n} times"),
        ("{S} buys enough {o} to have {n} times as many.", "{S} gets {n} times as many"),
    ],
    "/": [
        (
            "{S} splits {pos} {o} into {n} equal groups and keeps one group.",
            "{S} splits them into {n} equal groups and keeps one",
        ),
        (
            "{S} shares {pos} {o} equally among {n} bags and keeps one bag.",
            "{S} shares them among {n} bags and keeps one",
        ),
        ("{S} keeps only one out of every {n} {o}.", "{S} keeps one out of every {n}"),
    ],
}
_THEN = ["", "Then ", "After that, ", "Later, ", "Next, "]
_QUESTION = [
    "How many {o} does {name} have now?",
    "How many {o} does {name} have at the end?",
    "How many {o} does {name} have left?",
    "What is the number of {o} {name} has in the end?",
]
_QUESTION_FIRST = [
    "Find how many {o} {name} has at the end.",
    "How many {o} does {name} end up with?",
]
_DISTRACTOR = "{F} has {n} {on}."
_OBJ_PRONOUN = {"he": "him", "she": "her"}


def _count(n: int, objects: str) -> str:
    """The objects agreeing with a count: 1 apple, 2 apples."""
    return objects[:-1] if n == 1 else objects


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _apply(op: str, a: int, n: int) -> int | None:
    """a op n, or None where it would be negative or an inexact division."""
    if op == "+":
        return a + n
    if op == "-":
        return a - n if a >= n else None
    if op == "*":
        return a * n
    return a // n if a % n == 0 else None


def _chain(start: int, steps: list[tuple[str, int]], max_result: int) -> list[int] | None:
    """Intermediate results, or None if one leaves 0..max_result or a division is inexact."""
    values = [start]
    for op, n in steps:
        r = _apply(op, values[-1], n)
        if r is None or r > max_result:
            return None
        values.append(r)
    return values


def _draw_arithmetic(rng: random.Random, d: Difficulty) -> tuple[int, list[tuple[str, int]]]:
    """A start and steps whose every result is valid; rejection sampling."""
    while True:
        k = rng.randint(d.min_ops, d.max_ops)
        start = rng.randint(1, d.max_number)
        steps = []
        for _ in range(k):
            op = rng.choice(d.operations)
            n = rng.randint(2, d.max_factor) if op in "*/" else rng.randint(1, d.max_number)
            steps.append((op, n))
        values = _chain(start, steps, d.max_result)
        # Sharing out to nothing or multiplying nothing reads oddly; keep results positive
        # except perhaps the last.
        if values is not None and all(v > 0 for v in values[:-1]):
            return start, steps


def _make_problem(rng: random.Random, d: Difficulty) -> dict[str, Any]:
    """One problem's fields (without id)."""
    start, arith = _draw_arithmetic(rng, d)
    name, pron, pos = rng.choice(_PEOPLE)
    others = [p for p in _PEOPLE if p[0] != name]
    obj = rng.choice(_OBJECTS)
    order = rng.choice(["start_first", "start_first", "start_last", "question_first"])

    sentences: list[str] = []
    steps: list[dict[str, Any]] = []
    for i, (op, n) in enumerate(arith):
        # The first event names the person when it opens the story.
        subject = name if (i == 0 and order == "start_last") else pron
        templates = _STEPS[op]
        if subject == name:  # the story opens here: the person must be named
            templates = [t for t in templates if "{S}" in t[0] or "{pos_S}" in t[0]]
        asked, says = rng.choice(templates)
        friend = rng.choice(others)[0]
        asked_text = asked.format(**_slots(name, pron, pos, obj, n, subject, friend))
        says_text = says.format(**_slots(name, pron, pos, obj, n, pron, friend))
        then = "" if i == 0 else rng.choice(_THEN)
        if then and asked_text.startswith("The "):
            asked_text = "the " + asked_text[4:]
        sentences.append(_cap(then + asked_text))
        steps.append({"op": op, "n": n, "says": _cap(says_text)})

    if order == "start_last":
        start_q, start_says = rng.choice(_START_LAST)
    else:
        start_q, start_says = rng.choice(_START)
    slots = {"S": name, "pos_S": f"{name}'s", "n": start, "on": _count(start, obj)}
    start_text = _cap(start_q.format(are="is" if start == 1 else "are", **slots))
    start_says_text = start_says.format(**slots)
    if order == "start_last":
        body = sentences + [start_text]
    else:
        body = [start_text] + sentences
    if rng.random() < d.distractor_prob:
        other_obj = rng.choice([o for o in _OBJECTS if o != obj])
        friend = rng.choice(others)[0]
        at = rng.randint(1, len(body))
        n = rng.randint(1, d.max_number)
        body.insert(at, _DISTRACTOR.format(F=friend, n=n, on=_count(n, other_obj)))
    if order == "question_first":
        question = [rng.choice(_QUESTION_FIRST).format(o=obj, name=name)] + body
    else:
        question = body + [rng.choice(_QUESTION).format(o=obj, name=name)]
    values = _chain(start, arith, d.max_result)
    assert values is not None
    return {
        "question": " ".join(question),
        "answer": str(values[-1]),
        "name": name,
        "object": obj,
        "start": start,
        "start_says": start_says_text,
        "steps": steps,
    }


def _slots(
    name: str, pron: str, pos: str, obj: str, n: int, subject: str, friend: str
) -> dict[str, Any]:
    """The values a step template's slots take."""
    return {
        "S": subject,
        "pos": pos,
        "pos_S": f"{name}'s" if subject == name else pos,
        "obj_p": _OBJ_PRONOUN[pron],
        "o": obj,
        "on": _count(n, obj),
        "n": n,
        "F": friend,
    }


# --------------------------------------------------------------------------- gold data

SPLITS = ("train", "validation", "test")
# Share of the space of arithmetic chains each split draws from (by hash, so splits never meet).
_SPLIT_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}


def _bucket(fields: dict[str, Any]) -> int:
    """0..99 from the problem's arithmetic (start, ops, operands), not from its wording."""
    key = json.dumps([fields["start"], [[s["op"], s["n"]] for s in fields["steps"]]])
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100


def split_of(fields: dict[str, Any]) -> str:
    """The split a problem belongs to, decided by its arithmetic alone."""
    b = _bucket(fields)
    return next(s for s, r in _SPLIT_BUCKETS.items() if b in r)


def recompute(fields: dict[str, Any]) -> int:
    """The answer recomputed from the structured steps (raises if a step is invalid)."""
    values = _chain(fields["start"], [(s["op"], s["n"]) for s in fields["steps"]], 10**9)
    if values is None:
        raise ValueError(f"invalid arithmetic in {fields.get('id')}")
    return values[-1]


def generate(
    n: int, seed: int, split: str, difficulty: str | Difficulty = "default"
) -> list[dict[str, Any]]:
    """n gold problems of one split (train, validation, test), deterministic in (seed, split).

    Question texts are unique within the split; splits share no arithmetic chain, so no question
    of one split appears in another; no answer is more than `max_answer_share` of the problems.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    d = get_difficulty(difficulty)
    rng = random.Random(f"arith-{seed}-{split}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    answers: collections.Counter[str] = collections.Counter()
    cap = max(1, math.ceil(d.max_answer_share * n))
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"cannot draw {n} distinct {split} problems at {d}")
        p = _make_problem(rng, d)
        if split_of(p) != split or p["question"] in seen or answers[p["answer"]] >= cap:
            continue
        seen.add(p["question"])
        answers[p["answer"]] += 1
        out.append({"id": f"arith-{split}-{len(out):05d}", **p})
    return out


def write_source(
    out_dir: os.PathLike | str,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    difficulty: str | Difficulty = "default",
) -> dict[str, pathlib.Path]:
    """Writes gold JSON lines `arith_<split>.json` (the arith card's gold_files); returns paths."""
    sizes = sizes or {"train": 4000, "validation": 500, "test": 500}
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in sizes.items():
        path = out / f"arith_{split}.json"
        with atomic.open_atomic(path) as f:
            for fields in generate(n, seed, split, difficulty):
                f.write(json.dumps(fields) + "\n")
        paths[split] = path
    return paths


# --------------------------------------------------------------------------- simulated teacher

ERROR_RATE = 0.23  # wrong answers among parsed outputs; with the failures, ~75% accuracy overall
FAILURE_RATE = 0.025  # outputs the parser cannot read
CONTINUE_RATE = 0.7  # outputs running on into the next few-shot item
_SYMBOL = {"+": "+", "-": "-", "*": "*", "/": "/"}
_CONNECT = ["{says}, so {eq}.", "{says}, so {eq}.", "{says}: {eq}.", "{says}. That makes {eq}."]


def _wrong_chain(
    rng: random.Random, start: int, steps: list[tuple[str, int]], gold: int
) -> tuple[int, list[tuple[str, int, int]]] | None:
    """One slip, propagated: (start as read, [(op, n as read, result as written)]), or None."""
    kind = rng.choices(["slip", "misread", "wrong_op"], weights=[45, 30, 25])[0]
    at = rng.randrange(len(steps))
    ops = [op for op, _ in steps]
    ns = [n for _, n in steps]
    slip = 0
    if kind == "misread":
        if rng.random() < 0.25:
            start = max(1, start + rng.choice([-2, -1, 1, 2]))
            at = -1
        else:
            ns[at] = max(1, ns[at] + rng.choice([-2, -1, 1, 2]))
    elif kind == "wrong_op":
        ops[at] = {"+": "-", "-": "+", "*": "+", "/": "*"}[ops[at]]
    else:
        slip = rng.choice([-2, -1, 1, 1, 2, 10, -10])
    written = []
    value = start
    for i, (op, n) in enumerate(zip(ops, ns)):
        r = _apply(op, value, n)
        if r is None:
            return None
        if i == at and kind == "slip":
            r += slip
        if r < 0 or r > 999:
            return None
        written.append((op, n, r))
        value = r
    if value == gold:
        return None
    return start, written


def _rationale(
    fields: dict[str, Any],
    start: int,
    written: list[tuple[str, int, int]],
    rng: random.Random,
    plain: bool = False,
) -> str:
    """The rationale text for a (possibly wrong) chain; misread numbers appear as read."""
    parts = [re.sub(rf"\b{fields['start']}\b", str(start), fields["start_says"], count=1)]
    value = start
    for step, (op, n, r) in zip(fields["steps"], written):
        says = re.sub(rf"\b{step['n']}\b", str(n), step["says"], count=1)
        eq = f"{value} {_SYMBOL[op]} {n} = {r}"
        parts.append((_CONNECT[0] if plain else rng.choice(_CONNECT)).format(says=says, eq=eq))
        value = r
    return " ".join(parts)


def gold_rationale(fields: dict[str, Any]) -> str:
    """The correct rationale in the teacher's plainest style (exemplars, oracle ablations)."""
    written, value = [], fields["start"]
    for s in fields["steps"]:
        value = _apply(s["op"], value, s["n"])
        written.append((s["op"], s["n"], value))
    return _rationale(fields, fields["start"], written, random.Random(0), plain=True)


def simulate_teacher(fields: dict[str, Any], rng: random.Random) -> str:
    """A raw few-shot CoT continuation for one problem, as an LLM teacher would write it.

    About 75% of outputs end in the gold answer; a wrong one carries one slip (arithmetic, a
    misread number, a wrong operation) that its rationale carries through to its answer. About
    2.5% cannot be parsed. Deterministic given rng.
    """
    steps = [(s["op"], s["n"]) for s in fields["steps"]]
    gold = recompute(fields)
    chain = None
    if rng.random() < ERROR_RATE:
        for _ in range(20):
            chain = _wrong_chain(rng, fields["start"], steps, gold)
            if chain is not None:
                break
    if chain is None:
        written, value = [], fields["start"]
        for op, n in steps:
            value = _apply(op, value, n)
            written.append((op, n, value))
        chain = (fields["start"], written)
    start, written = chain
    rationale = _rationale(fields, start, written, rng)
    answer = written[-1][2]
    ending = f" The answer is {answer}."
    if rng.random() < FAILURE_RATE:
        kind = rng.choice(["truncated", "truncated", "no_marker", "no_marker", "twice"])
        if kind == "truncated":  # max tokens hit mid-sentence
            return rationale[: rng.randint(len(rationale) // 3, len(rationale) - 2)]
        if kind == "no_marker":
            return f"{rationale} So {fields['name']} has {answer} {fields['object']}."
        return rationale + ending + ending
    raw = rationale + ending
    if rng.random() < CONTINUE_RATE:
        nxt = _make_problem(rng, DIFFICULTIES["default"])["question"]
        raw += "\n\nQ: " + nxt[: rng.randint(10, len(nxt))]
        if rng.random() < 0.5:
            raw += "\nA:"
    return raw
