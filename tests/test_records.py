"""Records: JSONL round trip and validation that names file, line and field; task cards."""

import json

import pytest

from dsbs_jax.data.cards import all_cards, load_card, load_card_file
from dsbs_jax.errors import UserError
from dsbs_jax.records import OK, Record, read_records, record_from_json, write_records


def test_round_trip(tmp_path):
    recs = [
        Record(id="a", input="x", gold_label="1", teacher_label="1", rationale="r", status=OK),
        Record(id="b", input="y\nz", fields={"k": [1, 2]}),
    ]
    path = tmp_path / "r.jsonl"
    assert write_records(path, recs) == 2
    assert read_records(path) == recs


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"input": "x"}', "r.jsonl:2: field 'id': missing"),
        ('{"id": "b", "input": 3}', "r.jsonl:2: field 'input': expected str, got int"),
        ('{"id": "b", "input": "x", "status": "meh"}', "field 'status': unknown status"),
        ('{"id": "b", "input": "x", "colour": 1}', "field 'colour': unknown field"),
        ('{"id": "b", "input": ', "r.jsonl:2: invalid JSON"),
        ("[1, 2]", "r.jsonl:2: expected a JSON object"),
        ('{"id": "a", "input": "x"}', "duplicate id 'a'"),
    ],
)
def test_validation_names_file_line_field(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"id": "a", "input": "x"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_records(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="<record>: expected a JSON object"):
        record_from_json("text")


def test_builtin_cards_render_inputs():
    cards = all_cards()
    assert {"cqa", "svamp", "esnli", "anli"} <= set(cards)
    cqa = cards["cqa"]
    text = cqa.render_input({"question": "Where?", "choices": ["a place", "b", "c", "d", "e"]})
    assert text == "Where?\nAnswer Choices:\n(a) a place\n(b) b\n(c) c\n(d) d\n(e) e"
    esnli = cards["esnli"]
    assert (
        esnli.render_input({"premise": "P.", "hypothesis": "H."}) == "Premise: P.\nHypothesis: H."
    )
    assert esnli.gold_label({"label": 2}) == "contradiction"
    with pytest.raises(ValueError):
        esnli.gold_label({"label": 3})


def test_card_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndescription: d\ninput_template: '{a}'\nlabel_field: y\n")
    with pytest.raises(UserError, match="field 'parse': missing"):
        load_card_file(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml:.*invalid YAML"):
        load_card_file(bad)
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_card("nope")
    with pytest.raises(UserError, match="no such card file"):
        load_card(str(tmp_path / "missing.yaml"))
