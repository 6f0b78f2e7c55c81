"""Few-shot prompts: exemplars render, parse back, and users can bring their own."""

from __future__ import annotations

import json

import pytest

from dsbs_jax.cli import main
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.parse import parse_output
from dsbs_jax.errors import UserError
from dsbs_jax.metrics import label_correct
from dsbs_jax.teacher.prompts import (
    build_prompt,
    exemplar_continuation,
    load_exemplars,
    split_exemplar,
)

TASKS = ["cqa", "svamp", "esnli", "anli"]


@pytest.mark.parametrize("task", TASKS)
def test_exemplars_round_trip_through_the_parser(task):
    card = load_card(task)
    assert 4 <= len(card.exemplars) <= 7
    for ex in card.exemplars:
        fields, rationale, _ = split_exemplar(ex)
        got_rationale, label, status = parse_output(exemplar_continuation(card, ex), card.parse)
        assert status == "ok", ex
        assert got_rationale == rationale
        assert label_correct(label, card.gold_label(fields), card.metric), (label, ex)


@pytest.mark.parametrize("task", TASKS)
def test_prompt_ends_with_the_open_query(task):
    card = load_card(task)
    fields = split_exemplar(card.exemplars[0])[0]
    prompt = build_prompt(card, fields)
    items = prompt.split("\n\n")
    assert len(items) >= len(card.exemplars) + 1
    assert prompt.endswith(("\nA:", "\nReasonings:"))
    # every item starts with the cut, so a continuation that runs into a next item is cut there
    assert all(item.startswith(card.parse.cut) for item in items)


def test_cqa_prompt_shape():
    card = load_card("cqa")
    fields = {"question": "Where do fish live?", "choices": ["tree", "sea", "sky", "car", "bed"]}
    prompt = build_prompt(card, fields)
    assert prompt.endswith(
        "Q: Where do fish live?\nAnswer Choices:\n(a) tree\n(b) sea\n(c) sky\n(d) car\n(e) bed\nA:"
    )
    assert "So the answer is (b) refrigerator.\n\nQ: " in prompt


def test_user_exemplar_files(tmp_path):
    card = load_card("svamp")
    ex = {
        "input": "Jo has 3 cats and 4 dogs.\nHow many pets?",
        "rationale": "3 + 4 = 7.",
        "answer": "(3 + 4)",
    }
    jsonl = tmp_path / "ex.jsonl"
    jsonl.write_text(json.dumps(ex) + "\n")
    (loaded,) = load_exemplars(card, jsonl)
    prompt = build_prompt(card, {"input": "Q?"}, (loaded,))
    assert (
        prompt == "Q: Jo has 3 cats and 4 dogs.\nHow many pets?\nA: 3 + 4 = 7. The answer is "
        "(3 + 4).\n\nQ: Q?\nA:"
    )
    yml = tmp_path / "ex.yaml"
    yml.write_text("exemplars:\n  - fields: {input: 'a b'}\n    rationale: r.\n    answer: (1)\n")
    assert split_exemplar(load_exemplars(card, yml)[0]) == ({"input": "a b"}, "r.", "(1)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ex) + "\n" + json.dumps({"input": "x", "answer": "(1)"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'rationale'"):
        load_exemplars(card, bad)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"question": "x", "rationale": "r", "answer": "(1)"}) + "\n")
    with pytest.raises(UserError, match=r"nofield.jsonl:1: field 'input': missing"):
        load_exemplars(card, nofield)


def test_show_prompt(tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    rows = [{"input": f"Ann has {i} pens.\nHow many?", "label": f"( {i} )"} for i in range(3)]
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["teach", "svamp", "--inputs", str(inputs), "--show_prompt", "--index", "2"]) == 0
    out = capsys.readouterr().out
    assert out == build_prompt(load_card("svamp"), rows[2]) + "\n"
    assert out.endswith("Q: Ann has 2 pens.\nHow many?\nA:\n")
    assert main(["teach", "svamp", "--inputs", str(inputs), "--show_prompt", "--index", "3"]) == 2
    assert "--index 3: out of range 0..2" in capsys.readouterr().err
