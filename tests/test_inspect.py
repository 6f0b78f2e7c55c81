"""`dsbs inspect` in-process, without a terminal, on svamp prepared once."""

import json

import pytest

import dsbs_jax.tasks  # noqa: F401 - registers the tasks
from dsbs_jax.cli import main
from dsbs_jax.data import inspection
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.prepare import prepare
from dsbs_jax.errors import UserError


@pytest.fixture(scope="module")
def data_dir(shared_data, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("inspect"))
    prepare(load_card("svamp"), str(shared_data / "svamp"), d, log=lambda s: None)
    vocab_lib.train_vocab("svamp", d, vocab_size=400)
    return d


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch, data_dir):
    """`dsbs inspect --data_dir` sets DSBS_DATA_DIR in-process; undo it after each test."""
    monkeypatch.setenv("DSBS_DATA_DIR", data_dir)


def test_inspect_mixture_json(data_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", None)  # no terminal, no stdin
    argv = ["inspect", "svamp_dsbs", "--split", "train", "--data_dir", data_dir, "--examples"]
    assert main([*argv, "2", "--sequence_length", "inputs=128,targets=64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == {"svamp_label": 0.5, "svamp_rationale": 0.5}
    assert set(out["task_shares"]) == {"svamp_label", "svamp_rationale"}
    assert abs(out["task_shares"]["svamp_label"] - 0.5) <= 0.03
    assert out["counts"]["svamp_label"] == {"examples": 708, "source_records": 720}
    assert len(out["examples"]["svamp_rationale"]) == 2
    assert out["examples"]["svamp_rationale"][0]["inputs"].startswith("explain: ")
    lengths = out["lengths"]["svamp_rationale"]["targets"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert 0 < lengths["truncated"] < 1


def test_inspect_text_and_slices(data_dir, capsys):
    assert main(["inspect", "svamp_label", "--split", "train[:10%]", "--data_dir", data_dir]) == 0
    out = capsys.readouterr().out
    assert "token lengths" in out and "predict: " in out


def test_inspect_mixture_slice(data_dir, capsys):
    argv = ["inspect", "svamp_dsbs", "--split", "train[:25%]", "--data_dir", data_dir, "--json"]
    assert main([*argv, "--examples", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "train[:25%]"
    assert out["counts"]["svamp_label"]["source_records"] == 180  # a quarter of 720
    assert set(out["task_shares"]) == {"svamp_label", "svamp_rationale"}


def test_inspect_errors(data_dir, tmp_path, capsys):
    assert main(["inspect", "svamp_label", "--data_dir", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["inspect", "cqa_label", "--data_dir", data_dir]) == 2  # no cqa vocabulary
    err = capsys.readouterr().err
    assert "no vocabulary" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", "nope_task", "--data_dir", data_dir]) == 2
    assert main(["inspect", "svamp_label", "--split", "bogus", "--data_dir", data_dir]) == 2
    assert "bogus" in capsys.readouterr().err


def test_inspect_tasks_from_python(data_dir):
    """What `dsbs inspect` calls, from Python: one task's counts, examples and lengths."""
    r = inspection.inspect_tasks(
        "svamp_label", "train[:10%]", data_dir=data_dir, examples=2,
        sequence_length={"inputs": 16, "targets": 64}, max_examples=50,
    )  # fmt: skip
    assert r["kind"] == "task" and r["tasks"] == {"svamp_label": 1.0}
    assert r["vocabulary"].endswith(".model")
    assert r["counts"]["svamp_label"]["source_records"] == 72  # a tenth of 720
    assert r["counts"]["svamp_label"]["examples"] == 50  # max_examples
    assert [set(ex) for ex in r["examples"]["svamp_label"]] == [{"id", "inputs", "targets"}] * 2
    inputs = r["lengths"]["svamp_label"]["inputs"]
    assert 16 < inputs["max"] and inputs["truncated"] > 0  # questions are longer than 16 tokens
    assert r["task_shares"] == {"svamp_label": 1.0} and r["task_shares_sample"] == 0
    text = inspection.format_report(r)
    assert text.startswith("svamp_label (task), split train[:10%], vocabulary ")
    assert "examples of svamp_label:" in text and "task shares" not in text
    with pytest.raises(UserError, match="no such directory"):
        inspection.inspect_tasks("svamp_label", data_dir=data_dir + "/nope")


def test_length_stats():
    s = inspection.length_stats([1, 2, 3, 4, 100], limit=3)
    assert s == {"p50": 3, "p90": 61, "p99": 96, "max": 100, "truncated": 0.4}
    assert inspection.length_stats([], 5)["truncated"] == 0.0
