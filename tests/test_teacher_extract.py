"""`dsbs teach` end to end: kill and resume, the key kept secret, the files and simulated backends."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from loopback_server import ScriptedServer, last_query

from dsbs_jax.cli import main
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.sources import read_released
from dsbs_jax.errors import UserError
from dsbs_jax.metrics import label_correct
from dsbs_jax.records import read_records
from dsbs_jax.teacher.backends import simulated
from dsbs_jax.teacher.cache import RequestCache
from dsbs_jax.teacher.consistency import majority

REPO = pathlib.Path(__file__).resolve().parents[1]
KEY = "sk-test-DO-NOT-LEAK-4f9a"


def answer(body, path, seen):
    i = last_query(body).split("has ", 1)[1].split(" ", 1)[0]
    return f"Ann has {i} pens and buys 2 more. The answer is ({i} + 2).\n\nQ: Next"


def write_inputs(path: pathlib.Path, n: int, dup_every: int = 5) -> int:
    """n inputs; every dup_every-th repeats an earlier one. Returns the number of distinct ones."""
    rows = []
    for k in range(n):
        i = k - 1 if k % dup_every == dup_every - 1 else k
        rows.append(
            {
                "id": f"r{k}",
                "input": f"Ann has {i} pens and buys 2.\nHow many?",
                "label": f"( {i} + 2 )",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len({r["input"] for r in rows})


def teach_cmd(inputs, out, base_url, *extra):
    return [
        sys.executable,
        "-m",
        "dsbs_jax.cli",
        "teach",
        "svamp",
        "--inputs",
        str(inputs),
        "--out",
        str(out),
        "--backend",
        "openai",
        "--base_url",
        base_url,
        "--model",
        "m",
        "--endpoint",
        "completions",
        "--api_key_env",
        "TEST_KEY",
        "--concurrency",
        "3",
        "--retry_base_delay",
        "0.01",
        "--progress_every",
        "0",
        *extra,
    ]


def lines(path: pathlib.Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_kill_mid_run_then_resume(tmp_path):
    inputs, out = tmp_path / "in.jsonl", tmp_path / "out"
    unique = write_inputs(inputs, 30)
    env = os.environ | {"TEST_KEY": KEY, "PYTHONPATH": str(REPO)}
    cache_file = out / "cache" / "requests.jsonl"
    with ScriptedServer(answer) as server:
        server.hold_after(9)  # answer 9 prompts, then hold every request
        cmd = teach_cmd(inputs, out, server.base_url)
        first = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        wait_for(lambda: lines(cache_file) == 9 and len(server.log) > 9)
        first.kill()  # SIGKILL, with requests in flight
        out1, err1 = first.communicate()
        assert first.returncode == -9
        answered_before = server.total_answered
        records_before = lines(out / "svamp_train.jsonl.partial")
        assert not (out / "svamp_train.jsonl").exists()  # the records file is only ever whole
        server.release(abort=True)  # the held requests were never answered
        second = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert second.returncode == 0, second.stderr
    assert answered_before == 9 and 9 <= records_before < 30
    # every distinct prompt was answered exactly once over both runs
    assert server.total_answered == unique == 24
    assert set(server.answered.values()) == {1}
    assert "9 from the cache, 15 asked, 0 failed" in second.stdout
    records = read_records(out / "svamp_train.jsonl")
    assert [r.id for r in records] == [f"r{k}" for k in range(30)]
    assert all(
        r.ok and label_correct(r.teacher_label, r.gold_label, "equation_value") for r in records
    )
    assert "teacher accuracy: 100.00% (30/30" in second.stdout
    assert not (out / "svamp_train.jsonl.partial").exists()
    assert "inputs/s ETA" in second.stdout  # plain progress lines when stdout is not a TTY
    # the API key reached the server and nowhere else
    assert all(x.authorization == f"Bearer {KEY}" for x in server.log)
    for text in (out1, err1, second.stdout, second.stderr):
        assert KEY not in text
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_requests_dedupe_and_rerun_is_free(tmp_path, capsys, monkeypatch):
    inputs, out = tmp_path / "in.jsonl", tmp_path / "out"
    unique = write_inputs(inputs, 12, dup_every=3)
    monkeypatch.setenv("TEST_KEY", KEY)
    with ScriptedServer(answer) as server:
        args = teach_cmd(inputs, out, server.base_url, "--no_progress")[3:]
        assert main(args) == 0
        assert main(args) == 0
    assert len(server.log) == unique == 8
    assert "8 from the cache, 0 asked" in capsys.readouterr().out
    stats = json.loads((out / "svamp_train.stats.json").read_text())
    assert stats["inputs"] == 12 and stats["teacher_accuracy"] == 100.0
    assert KEY not in json.dumps(stats)


@pytest.mark.parametrize(("task", "expected"), [("svamp", 74.0), ("cqa", 77.23), ("esnli", 72.99)])
def test_files_backend_reproduces_released_accuracy(shared_data, tmp_path, capsys, task, expected):
    source = shared_data / task
    assert (
        main(
            [
                "teach",
                task,
                "--split",
                "test",
                "--source_dir",
                str(source),
                "--backend",
                "files",
                "--out",
                str(tmp_path),
                "--no_progress",
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / f"{task}_test.stats.json").read_text())
    card = load_card(task)
    released = read_released(card, source, "test")
    direct = (
        100
        * sum(label_correct(r.teacher_label, r.gold_label, card.metric) for r in released)
        / len(released)
    )
    assert stats["teacher_accuracy"] == pytest.approx(direct)
    assert round(stats["teacher_accuracy"], 2) == expected
    records = read_records(tmp_path / f"{task}_test.jsonl")
    assert [(r.id, r.teacher_label, r.status) for r in records] == [
        (r.id, r.teacher_label, r.status) for r in released
    ]
    assert f"teacher accuracy: {expected:.2f}%" in capsys.readouterr().out


def test_files_backend_jsonl(tmp_path):
    inputs = tmp_path / "in.jsonl"
    write_inputs(inputs, 3, dup_every=99)
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text(
        json.dumps({"id": "r2", "raw": "2 + 2. The answer is (2 + 2)."})
        + "\n"
        + json.dumps(
            {
                "input": "Ann has 0 pens and buys 2.\nHow many?",
                "raw": "So. The answer is (0 + 2).\n\nQ: x",
            }
        )
        + "\n"
    )
    assert (
        main(
            [
                "teach",
                "svamp",
                "--inputs",
                str(inputs),
                "--backend",
                "files",
                "--teacher_file",
                str(teacher),
                "--out",
                str(tmp_path / "o"),
                "--no_progress",
            ]
        )
        == 0
    )
    records = read_records(tmp_path / "o" / "svamp_train.jsonl")
    assert [r.status for r in records] == ["ok", "no_teacher", "ok"]
    assert [r.teacher_label for r in records] == ["(0 + 2)", None, "(2 + 2)"]


def test_cache_survives_a_half_written_line(tmp_path):
    cache = RequestCache(tmp_path)
    cache.put("a", {"texts": ["x"]})
    cache.put("b", {"texts": ["y"]})
    with pytest.raises(UserError, match="another `dsbs teach`"):
        RequestCache(tmp_path)
    cache.close()
    with open(tmp_path / "requests.jsonl", "a") as f:
        f.write('{"key": "c", "value": {"te')  # killed mid-write
    cache = RequestCache(tmp_path)
    assert len(cache) == 2 and "c" not in cache
    cache.put("c", {"texts": ["z"]})
    cache.close()
    assert [
        json.loads(x)["key"] for x in (tmp_path / "requests.jsonl").read_text().splitlines()
    ] == ["a", "b", "c"]


BUILTIN_CARD = """
name: toyarith
description: a built-in style card for the simulated backend's test
reader: builtin
fields: [a, b, answer]
input_template: "What is {a} plus {b}?"
label_field: answer
gold_files: {train: train.jsonl}
parse: {cut: "Q:", marker: "The answer is", label: parenthesised}
metric: equation_value
prompt_template: "Q: {input}\\nA: {rationale} The answer is {answer}."
"""


def test_simulated_backend_adapts_the_builtin_teacher(tmp_path, monkeypatch):
    card = tmp_path / "toyarith.yaml"
    card.write_text(BUILTIN_CARD)
    rows = [{"a": i, "b": 2, "answer": f"({i} + 2)"} for i in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def simulate_teacher(fields, rng):
        slip = rng.random() < 0.5
        total = fields["a"] + fields["b"] + (1 if slip else 0)
        return f"{fields['a']} + {fields['b']} = {total}. The answer is ({total}).\n\nQ: What"

    monkeypatch.setattr(simulated, "simulate_teacher", simulate_teacher)
    base = ["teach", str(card), "--source_dir", str(tmp_path), "--no_progress"]
    assert main([*base, "--out", str(tmp_path / "o1")]) == 0
    assert main([*base, "--out", str(tmp_path / "o2"), "--backend", "simulated"]) == 0
    r1 = read_records(tmp_path / "o1" / "toyarith_train.jsonl")
    r2 = read_records(tmp_path / "o2" / "toyarith_train.jsonl")
    assert [r.raw for r in r1] == [r.raw for r in r2]  # seeded per input: reproducible
    assert all(r.ok for r in r1)
    right = [label_correct(r.teacher_label, r.gold_label, "equation_value") for r in r1]
    assert 0 < sum(right) < 6  # the slips came through the parser as wrong labels


def test_simulated_backend_refuses_other_cards(tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    write_inputs(inputs, 2)
    assert (
        main(
            [
                "teach",
                "svamp",
                "--inputs",
                str(inputs),
                "--backend",
                "simulated",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "built-in task" in capsys.readouterr().err


def test_majority_vote_by_value_and_by_text():
    svamp, cqa = load_card("svamp"), load_card("cqa")
    texts = [
        "a. The answer is (4).",
        "b. The answer is (2 + 2).",
        "c. The answer is (5).",
        "no answer here",
    ]
    vote = majority(texts, svamp)
    assert (vote.chosen, vote.votes, vote.voters) == (0, 2, 3)
    texts = [
        "x. So the answer is (a) cat.",
        "y. So the answer is (b) dog.",
        "z. So the answer is (c) dog.",
    ]
    assert majority(texts, cqa).chosen == 1
    assert majority(["nothing"], cqa).voters == 0
