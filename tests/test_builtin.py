"""The built-in arithmetic task: gold data, splits, the simulated teacher, and the record path."""

import collections
import dataclasses
import random
import re

import pytest

from dsbs_jax.builtin import arith
from dsbs_jax.data import sources
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.parse import parse_output
from dsbs_jax.records import OK
from dsbs_jax.teacher import prompts

CARD = load_card("arith")
_EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_generate_is_deterministic_in_seed_and_split():
    a = arith.generate(200, seed=3, split="train")
    assert a == arith.generate(200, seed=3, split="train")
    assert a != arith.generate(200, seed=4, split="train")
    assert [p["id"] for p in a[:2]] == ["arith-train-00000", "arith-train-00001"]
    assert len({p["question"] for p in a}) == 200


def test_answers_recompute_and_stay_in_range():
    d = arith.DIFFICULTIES["default"]
    for p in arith.generate(1000, seed=0, split="train"):
        assert p["answer"] == str(arith.recompute(p))
        assert d.min_ops <= len(p["steps"]) <= d.max_ops
        value = p["start"]
        assert str(value) in p["question"]
        for s in p["steps"]:
            assert str(s["n"]) in p["question"]
            if s["op"] == "/":
                assert value % s["n"] == 0  # exact division only
            value = _value(value, s["op"], s["n"])
            assert 0 <= value <= d.max_result
        assert int(p["answer"]) == value


def test_exact_division_and_difficulty_knob():
    easy = arith.generate(300, seed=0, split="train", difficulty="easy")
    assert {s["op"] for p in easy for s in p["steps"]} <= {"+", "-"}
    assert all(len(p["steps"]) == 2 and p["start"] <= 6 for p in easy)
    three = arith.Difficulty(min_ops=3, max_ops=3, operations="*/", max_result=50)
    for p in arith.generate(200, seed=0, split="test", difficulty=three):
        assert len(p["steps"]) == 3
        arith.recompute(p)  # raises on an inexact division
        assert int(p["answer"]) <= 50
    with pytest.raises(ValueError):
        arith.get_difficulty("impossible")


def test_answer_cap_spreads_the_easy_test_split():
    """The easy test split has few arithmetic chains; uncapped, one answer is a fifth of it."""

    def top_share(difficulty):
        problems = arith.generate(1000, seed=0, split="test", difficulty=difficulty)
        return collections.Counter(p["answer"] for p in problems).most_common(1)[0][1] / 1000

    easy = arith.get_difficulty("easy")
    assert easy.max_answer_share == 0.1 and top_share(easy) <= 0.1
    assert top_share(dataclasses.replace(easy, max_answer_share=1.0)) > 0.15
    with pytest.raises(ValueError, match="max_answer_share"):
        arith.Difficulty(max_answer_share=0.0)


def test_splits_share_no_question_and_no_arithmetic():
    def chain(p):
        return (p["start"], tuple((s["op"], s["n"]) for s in p["steps"]))

    train = arith.generate(4000, seed=0, split="train")
    for split in ("validation", "test"):
        other = arith.generate(500, seed=0, split=split)
        assert not {p["question"] for p in train} & {p["question"] for p in other}
        assert not {chain(p) for p in train} & {chain(p) for p in other}
        assert all(arith.split_of(p) == split for p in other)


def test_simulated_teacher_accuracy_and_failures_through_the_shared_parser():
    problems = arith.generate(2000, seed=1, split="train")
    rng = random.Random(7)
    raws = [arith.simulate_teacher(p, rng) for p in problems]
    rng = random.Random(7)
    assert raws == [arith.simulate_teacher(p, rng) for p in problems]  # deterministic given rng
    parsed = [parse_output(raw, CARD.parse) for raw in raws]
    statuses = collections.Counter(status for _, _, status in parsed)
    failures = 1 - statuses[OK] / len(parsed)
    accuracy = sum(label == p["answer"] for p, (_, label, _) in zip(problems, parsed)) / 2000
    assert 0.01 <= failures <= 0.05, statuses
    assert 0.70 <= accuracy <= 0.80, accuracy
    assert sum("\n\nQ: " in raw for raw in raws) > 1000  # the next few-shot item, cut by the parser
    assert not any("Q:" in rationale for rationale, _, _ in parsed)


def test_every_rationale_is_internally_consistent():
    problems = arith.generate(1000, seed=2, split="train")
    rng = random.Random(0)
    wrong = 0
    for p in problems:
        rationale, label, status = parse_output(arith.simulate_teacher(p, rng), CARD.parse)
        if status != OK:
            continue
        eqs = _EQ.findall(rationale)
        assert len(eqs) == len(p["steps"])
        for (_, _, _, r), (a, _, _, _) in zip(eqs, eqs[1:]):
            assert r == a  # every step starts from the previous step's result
        assert eqs[-1][3] == label  # the last step's result is the stated answer
        wrong += label != p["answer"]
    assert wrong > 150


def test_wrong_rationales_hold_exactly_one_slip():
    problems = arith.generate(1000, seed=3, split="train")
    rng = random.Random(1)
    for p in problems:
        rationale, label, status = parse_output(arith.simulate_teacher(p, rng), CARD.parse)
        if status != OK or label == p["answer"]:
            continue
        eqs = _EQ.findall(rationale)
        miscomputed = sum(_value(int(a), op, int(b)) != int(r) for a, op, b, r in eqs)
        wrong_op = sum(op != s["op"] for (_, op, _, _), s in zip(eqs, p["steps"]))
        misread = sum(int(b) != s["n"] for (_, _, b, _), s in zip(eqs, p["steps"]))
        misread += int(eqs[0][0]) != p["start"]
        assert miscomputed + wrong_op + misread == 1, (p, rationale)


def _value(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else -1}[op]


def test_card_renders_input_and_its_exemplars_are_right():
    p = arith.generate(1, seed=0, split="test")[0]
    assert CARD.render_input(p) == p["question"]
    assert CARD.gold_label(p) == p["answer"]
    prompts.check_exemplars(CARD, CARD.exemplars, CARD.path)
    assert prompts.build_prompt(CARD, p).endswith(f"Q: {p['question']}\nA:")
    for ex in CARD.exemplars:
        rationale, label, status = parse_output(prompts.exemplar_continuation(CARD, ex), CARD.parse)
        assert status == OK and label == ex["answer"]
        assert _EQ.findall(rationale)[-1][3] == ex["answer"]


def test_gold_rationale_ends_in_the_answer():
    for p in arith.generate(100, seed=0, split="validation"):
        assert _EQ.findall(arith.gold_rationale(p))[-1][3] == p["answer"]


def test_written_source_flows_into_records(tmp_path):
    paths = arith.write_source(tmp_path, sizes={"train": 300, "test": 50}, seed=5)
    assert sorted(paths) == ["test", "train"]
    assert sorted(sources.released_splits(CARD, tmp_path)) == ["test", "train"]
    records = sources.read_released(CARD, tmp_path, "train", require_teacher=False)
    assert [r.id for r in records] == [p["id"] for p in arith.generate(300, 5, "train")]
    rng = random.Random(0)
    records = [
        sources.attach_teacher(r, arith.simulate_teacher(r.fields, rng), CARD) for r in records
    ]
    ok = [r for r in records if r.status == OK]
    assert len(ok) >= 0.93 * len(records)
    for r in ok:
        assert r.input == r.fields["question"] and r.gold_label == r.fields["answer"]
        assert r.teacher_label.isdigit() and r.rationale and "Q:" not in r.rationale
