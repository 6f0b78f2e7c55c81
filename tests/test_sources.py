"""Readers: the released layout (counts and teacher accuracy on the real data), user JSONL."""

import json

import pytest

from dsbs_jax.data.cards import load_card
from dsbs_jax.data.sources import read_jsonl, read_released, teacher_files
from dsbs_jax.errors import UserError
from dsbs_jax.metrics import accuracy

# (dataset, released split, count, README teacher accuracy)
RELEASED = [
    ("cqa", "train", 9741, 74.3),
    ("cqa", "test", 1221, 77.2),
    ("svamp", "test", 200, 74.0),
    ("svamp", "train", 800, None),
    ("esnli", "valid", 9842, 73.2),
    ("esnli", "test", 9824, 73.0),
]


@pytest.mark.parametrize("dataset, split, count, teacher_acc", RELEASED)
def test_released_counts_and_teacher_accuracy(shared_data, dataset, split, count, teacher_acc):
    card = load_card(dataset)
    records = read_released(card, shared_data / dataset, split)
    assert len(records) == count
    assert len({r.id for r in records}) == count
    assert all(r.gold_label for r in records)
    ok = [r for r in records if r.ok]
    assert len(ok) >= 0.98 * count and all(r.rationale and r.teacher_label for r in ok)
    if teacher_acc is not None:
        acc = accuracy(
            [r.gold_label for r in records], [r.teacher_label or "" for r in records], card.metric
        )
        assert abs(acc - teacher_acc) <= 0.5


def _layout(tmp_path, n_gold=3, outputs=((0, ["A. The answer is (1 + 1)."] * 3),)):
    src = tmp_path / "svamp"
    (src / "llm").mkdir(parents=True)
    lines = [json.dumps({"input": f"q{i}", "label": "( 1.0 + 1.0 )"}) for i in range(n_gold)]
    (src / "svamp_train.json").write_text("\n".join(lines) + "\n")
    for index, items in outputs:
        (src / "llm" / f"train_CoT_{index}.json").write_text(json.dumps(items))
    return src


def test_teacher_files_in_numeric_order(tmp_path):
    items = [(i, [f"R{i}. The answer is ({i})."]) for i in (0, 1, 2, 9, 10, 11)]
    src = _layout(tmp_path, n_gold=6, outputs=items)
    assert [p.name for p in teacher_files(src, "train")][-3:] == [
        "train_CoT_9.json",
        "train_CoT_10.json",
        "train_CoT_11.json",
    ]
    records = read_released(load_card("svamp"), src, "train")
    assert [r.teacher_label for r in records] == ["(0)", "(1)", "(2)", "(9)", "(10)", "(11)"]
    assert records[0].rationale == "R0." and records[0].ok


def test_parse_failures_are_kept(tmp_path):
    outputs = ((0, ["no marker here", "The answer is (2).", "R. The answer is ."]),)
    records = read_released(load_card("svamp"), _layout(tmp_path, outputs=outputs), "train")
    assert [r.status for r in records] == ["no_answer", "empty_rationale", "empty_label"]


def test_short_teacher_file_and_missing_dir(tmp_path):
    src = _layout(tmp_path, n_gold=4)
    with pytest.raises(UserError, match="3 teacher outputs in 1 files, but .* has 4 records"):
        read_released(load_card("svamp"), src, "train")
    with pytest.raises(UserError, match="no such directory"):
        read_released(load_card("svamp"), tmp_path / "nope", "train")


def test_user_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"input": "q", "label": "( 2 )", "raw": "R. The answer is (2)."})
        + "\n"
        + json.dumps({"input": "q2", "label": "( 3 )", "teacher_label": "(3)", "rationale": "R"})
        + "\n"
        + json.dumps({"input": "q3"})
        + "\n"
    )
    with pytest.raises(UserError, match="mine.jsonl:3: field 'label': missing"):
        read_jsonl(load_card("svamp"), path)
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    records = read_jsonl(load_card("svamp"), path)
    assert [(r.teacher_label, r.status) for r in records] == [("(2)", "ok"), ("(3)", "ok")]
