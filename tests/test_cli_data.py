"""The data commands through the CLI: prepare, stats, tasks, and bad input (exit 2, one line)."""

import json

import pytest

from dsbs_jax.cli import main
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.sources import read_released
from dsbs_jax.records import write_records


def _one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    for n in needles:
        assert n in lines[0], lines[0]


def _svamp(tmp_path, gold_lines, outputs):
    src = tmp_path / "svamp"
    (src / "llm").mkdir(parents=True)
    (src / "svamp_train.json").write_text("\n".join(gold_lines) + "\n")
    (src / "llm" / "train_CoT_0.json").write_text(json.dumps(outputs))
    return src


GOOD = json.dumps({"input": "q", "label": "( 1.0 + 1.0 )"})


def test_broken_json_line(tmp_path, capsys):
    src = _svamp(tmp_path, [GOOD, '{"input": "q", "label": '], ["R. The answer is (2)."] * 2)
    assert main(["stats", "svamp", "--source_dir", str(src)]) == 2
    _one_line_error(capsys, "svamp_train.json:2:", "invalid JSON")


def test_missing_field(tmp_path, capsys):
    src = _svamp(tmp_path, [GOOD, GOOD, json.dumps({"input": "q"})], ["R. The answer is (2)."] * 3)
    assert main(["prepare", "svamp", "--source_dir", str(src), "--data_dir", str(tmp_path)]) == 2
    _one_line_error(capsys, "svamp_train.json:3:", "field 'label'")


def test_teacher_file_shorter_than_gold(tmp_path, capsys):
    src = _svamp(tmp_path, [GOOD] * 3, ["R. The answer is (2)."] * 2)
    assert main(["stats", "svamp", "--source_dir", str(src), "--json"]) == 2
    _one_line_error(capsys, "2 teacher outputs", "3 records")


def test_missing_directory(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert main(["stats", "svamp", "--source_dir", missing]) == 2
    _one_line_error(capsys, missing, "no such directory")
    assert main(["prepare", "svamp", "--source_dir", missing, "--data_dir", str(tmp_path)]) == 2
    _one_line_error(capsys, "no such directory")


def test_bad_records_file(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "input": "x"}\n{"id": "b"}\n')
    argv = ["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(tmp_path)]
    assert main(argv) == 2
    _one_line_error(capsys, "train.jsonl:2:", "field 'input'")


def test_stats_json_on_released_data(shared_data, capsys):
    assert main(["stats", "svamp", "--source_dir", str(shared_data / "svamp"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "train": {"n": 800, "parse_failures": 13, "teacher_accuracy": pytest.approx(73.25)},
        "test": {"n": 200, "parse_failures": 2, "teacher_accuracy": pytest.approx(74.0)},
    }


def test_prepare_from_records_files(shared_data, tmp_path, capsys):
    card = load_card("svamp")
    records = read_released(card, shared_data / "svamp", "test")[:40]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_records(train, records[:30])
    write_records(test, records[30:])
    out_dir = tmp_path / "out"
    argv = ["prepare", "svamp", "--records", f"train={train}", "--records", f"test={test}"]
    assert main([*argv, "--data_dir", str(out_dir)]) == 0
    assert "train=27 validation=3 test=10" in capsys.readouterr().out
    assert (out_dir / "dsbs_svamp" / "1.0.0" / "dataset_info.json").exists()


@pytest.mark.parametrize("name", ["validation", "valid"])
def test_prepare_records_validation_names(shared_data, tmp_path, capfd, name):
    """Both names give the validation split (svamp has no released one to map to)."""
    card = load_card("svamp")
    records = read_released(card, shared_data / "svamp", "test")[:40]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_records(train, records[:30])
    write_records(val, records[30:])
    argv = ["prepare", "svamp", "--records", f"train={train}", "--records", f"{name}={val}"]
    assert main([*argv, "--data_dir", str(tmp_path / "out")]) == 0
    captured = capfd.readouterr()
    assert "train=30 validation=10" in captured.out
    assert "10% of released" not in captured.out  # nothing carved: the file is the split
    assert "Downloading and preparing" not in captured.out + captured.err


def test_prepare_records_bad_split_name(tmp_path, capsys):
    argv = ["prepare", "svamp", "--records", "dev=x.jsonl", "--data_dir", str(tmp_path)]
    assert main(argv) == 2
    _one_line_error(capsys, "unknown split 'dev'")


def test_tasks_json(capsys):
    assert main(["tasks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "esnli_label" in out["tasks"]
    assert out["mixtures"]["esnli_dsbs"] == {"esnli_label": 0.5, "esnli_rationale": 0.5}
