"""dsbs sweep / dsbs report: tables, rationale scoring, and a tiny sweep end to end with resume."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from dsbs_jax.cli import main
from dsbs_jax.data.cards import load_card
from dsbs_jax.errors import UserError
from dsbs_jax.experiments import scoring
from dsbs_jax.report import results as results_lib
from dsbs_jax.report import tables
from dsbs_jax.report.results import RunResult


def _r(method, n, seed, acc, rat=None, fraction=None):
    return RunResult(
        method=method,
        fraction=fraction if fraction is not None else n / 10,
        seed=seed,
        train_examples=n,
        steps=10,
        accuracy=acc,
        rationale_accuracy=rat,
    )


def test_mean_and_standard_error_by_hand():
    c = tables.mean_stderr([10.0, 20.0, 30.0])
    assert c.mean == pytest.approx(20.0)
    assert c.stderr == pytest.approx(10.0 / 3**0.5)  # sample sd 10, n 3
    assert c.format() == "20.0 ± 5.8"
    assert tables.mean_stderr([42.0]).format() == "42.0"  # one seed: no error to show


def test_separation_in_standard_errors_of_the_difference_by_hand():
    rs = [_r("dsbs", 100, s, v) for s, v in enumerate((30.0, 34.0, 32.0))]
    rs += [_r("finetune", 100, s, v) for s, v in enumerate((28.0, 29.0, 27.0))]
    # dsbs 32 ± 1.155, finetune 28 ± 0.577: difference 4, error sqrt(4/3 + 1/3) = 1.291
    diff, k = tables.separation(tables.mean_stderr([30, 34, 32]), tables.mean_stderr([28, 29, 27]))
    assert diff == pytest.approx(4.0) and k == pytest.approx(4.0 / (5 / 3) ** 0.5)
    table = tables.separation_markdown(rs)
    assert "| fine-tuning (gold labels) | +4.0 (+3.1 s.e.) |" in table


def test_markdown_table_rows_columns_and_cells():
    rs = [
        _r("dsbs", 100, 0, 50.0, 70.0),
        _r("dsbs", 100, 1, 60.0, 80.0),
        _r("finetune", 100, 0, 40.0),
        _r("finetune", 100, 1, 44.0),
        _r("finetune", 200, 0, 41.0),
        _r("finetune", 200, 1, 45.0),
        _r("distill", 200, 0, 30.0),
    ]
    table = tables.markdown_table(rs)
    lines = table.splitlines()
    assert lines[0] == "| method | 100 ex (10%) | 200 ex (20%) | seeds |"
    assert lines[2] == "| fine-tuning (gold labels) | 42.0 ± 2.0 | 43.0 ± 2.0 | 2 |"
    assert lines[3] == "| distillation (teacher labels) | – | 30.0 | 1 |"
    assert lines[4] == "| distilling step-by-step | 55.0 ± 5.0 | – | 2 |"
    rat = tables.markdown_table(rs, "rationale_accuracy").splitlines()
    assert len(rat) == 3 and rat[2].startswith("| distilling step-by-step | 75.0 ± 5.0 |")


def test_rationale_then_answer_scoring_on_hand_made_outputs():
    card = load_card("arith")
    outs = [
        "Mia has 7 shells. She finds 5 more, so 7 + 5 = 12. She gives 4 to Ben, so 12 - 4 = 8.",
        "Mia has 7 shells. She finds 5 more, so 7 + 5 = 12. The answer is 12.",  # marker: parsed
        "Mia has 7 shells. She finds 5 more, so 7 + 5 =",  # no result: no answer
        "Tom has 3 apples. He gets 2 times as many, so 3 * 2 = 6. He loses 1, so 6 - 1 = 4.",
    ]
    assert [scoring.answer_from_rationale(o, card) for o in outs] == ["8", "12", "", "4"]
    acc, answers = scoring.rationale_accuracy(outs, ["8", "12", "12", "5"], card)
    assert answers == ["8", "12", "", "4"]
    assert acc == pytest.approx(50.0)  # the last one's slip is carried to a wrong answer


def test_results_file_ignores_a_torn_last_line_and_keeps_the_last_of_a_key(tmp_path):
    results_lib.append_result(tmp_path, _r("dsbs", 100, 0, 10.0))
    results_lib.append_result(tmp_path, _r("dsbs", 100, 0, 12.0))
    with open(results_lib.results_path(tmp_path), "a") as f:
        f.write('{"method": "dsbs", "fra')
    rs = results_lib.read_results(tmp_path)
    assert [(r.method, r.accuracy) for r in rs] == [("dsbs", 12.0)]


@pytest.mark.parametrize(
    ("field", "value"), [("accuracy", "high"), ("seed", 1.5), ("timing", [1]), ("accuracy", True)]
)
def test_report_refuses_a_results_line_of_the_wrong_type(tmp_path, capsys, field, value):
    results_lib.append_result(tmp_path, _r("dsbs", 100, 0, 10.0))
    row = dataclasses.asdict(_r("finetune", 100, 0, 9.0)) | {field: value}
    with open(results_lib.results_path(tmp_path), "a") as f:
        f.write(json.dumps(row) + "\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"results.jsonl:2: field '{field}': must be" in err[0], err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from dsbs_jax.experiments.builtin_data import make_builtin_data

    out = tmp_path_factory.mktemp("tiny")
    data_dir, acc = make_builtin_data(
        str(out), {"train": 64, "validation": 8, "test": 16}, seed=0, log=lambda s: None
    )
    return data_dir, acc


def _sweep(data_dir, out, log, methods=("finetune", "dsbs"), fractions=(50, 100), workers=1):
    from dsbs_jax.experiments.config import SweepConfig
    from dsbs_jax.experiments.runner import run_sweep

    cfg = SweepConfig(
        task="arith",
        data_dir=data_dir,
        out=str(out),
        methods=methods,
        fractions=fractions,
        workers=workers,
        seeds=2,
        steps=3,
        batch_size=8,
        model="micro",
        test_examples=16,
        score_rationale=True,
    )
    return run_sweep(cfg, log=log)


def test_tiny_sweep_writes_report_and_resumes(tiny_data, tmp_path, capsys):
    from dsbs_jax.report.report import write_report

    data_dir, _ = tiny_data
    out = tmp_path / "sweep"
    lines: list[str] = []
    runs = _sweep(data_dir, out, lines.append)
    assert len(runs) == 8
    assert {(r.method, r.train_examples) for r in runs} == {
        (m, n) for m in ("finetune", "dsbs") for n in (32, 64)
    }
    for r in runs:
        assert 0.0 <= r.accuracy <= 100.0 and r.test_examples == 16
        assert (r.rationale_accuracy is not None) == (r.method == "dsbs")
        run_dir = out / r.model_dir
        assert (run_dir / "checkpoint_3").is_dir()
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "train"))
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "eval"))
        preds = [json.loads(x) for x in open(run_dir / "test_predictions.jsonl")]
        assert len(preds) == 16
    paths = write_report(str(out))
    table = open(paths["table"]).read()
    assert "| method | 32 ex (50%) | 64 ex (100%) | seeds |" in table
    assert "| distilling step-by-step |" in table and " ± " in table
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "![accuracy](accuracy.png)" in open(paths["report"]).read()

    # One evaluator: `dsbs eval` on a run's final checkpoint gives the table's accuracy and the
    # same predictions, example by example.
    lengths = json.load(open(out / "sweep.json"))["core"]["lengths"]
    for r in runs[:2]:  # a fine-tuning and a dsbs run
        run_dir = out / r.model_dir
        rc = main([
            "eval", "--json", "--gin_file=models/micro.gin", "--gin_file=runs/eval.gin",
            f"--gin.CHECKPOINT_PATH='{run_dir / 'checkpoint_3'}'",
            "--gin.MIXTURE_OR_TASK_NAME='arith_gold_label'",
            f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {lengths['inputs']}, "
            f"'targets': {lengths['labels']}}}",
            "--gin.EVAL_EXAMPLES=16", f"--gin.OUTPUT_DIR='{tmp_path / 'eval' / r.model_dir}'",
            f"--tfds_data_dir={data_dir}",
        ])  # fmt: skip
        assert rc == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert printed["arith_gold_label/accuracy"] == pytest.approx(r.accuracy, abs=1e-4)
        logged = (
            tmp_path
            / "eval"
            / r.model_dir
            / "inference_eval"
            / "arith_gold_label-test-000000.jsonl"
        )
        ours = [json.loads(x)["prediction"] for x in open(run_dir / "test_predictions.jsonl")]
        theirs = [json.loads(x)["prediction"] for x in open(logged)]
        assert ours == theirs

    # Resume: nothing is redone; after losing one line, only that run is.
    before = open(results_lib.results_path(out)).read()
    lines.clear()
    _sweep(data_dir, out, lines.append)
    assert "8 runs (8 already done)" in lines[0] and len(lines) == 1
    assert open(results_lib.results_path(out)).read() == before
    kept = before.splitlines()[:-1]
    with open(results_lib.results_path(out), "w") as f:
        f.write("\n".join(kept) + "\n")
    lines.clear()
    _sweep(data_dir, out, lines.append)
    assert "8 runs (7 already done)" in lines[0] and len(lines) == 2
    assert len(results_lib.read_results(out)) == 8

    # dsbs report OUT rebuilds from the files alone.
    os.remove(paths["table"])
    assert main(["report", str(out)]) == 0
    assert open(paths["table"]).read() == table


def test_two_workers_run_every_planned_run_exactly_once(tiny_data, tmp_path):
    data_dir, _ = tiny_data
    out = tmp_path / "w"
    lines: list[str] = []
    runs = _sweep(data_dir, out, lines.append, ("finetune",), fractions=(100,), workers=2)
    assert sorted((r.method, r.seed) for r in runs) == [("finetune", 0), ("finetune", 1)]
    keys = [(o["method"], o["seed"]) for o in map(json.loads, open(results_lib.results_path(out)))]
    assert len(keys) == len(set(keys)) == 2  # claimed once each, no run trained twice
    assert "2 worker processes" in lines[0]
    set_up = {x.split(":")[0] for x in lines if x.startswith("worker") and "set up in" in x}
    assert set_up == {"worker 0", "worker 1"}
    assert sum(" accuracy " in x for x in lines) == 2
    assert not (out / "claims").exists()
    assert not (out / ".tmp").exists()  # the workers' TMPDIRs
    for r in runs:
        assert (out / r.model_dir / "test_predictions.jsonl").exists()
    # The workers' standard error (library start-up chatter) is in their logs, not the terminal.
    assert {f.name for f in (out / "worker_logs").iterdir()} == {"worker_0.log", "worker_1.log"}
    assert not any("worker 0|" in x or "worker 1|" in x for x in lines)


def test_a_failing_worker_prints_the_end_of_its_log_and_stops_with_one_error(tmp_path, capsys):
    from dsbs_jax.experiments.config import SweepConfig
    from dsbs_jax.experiments.workers import run_in_workers

    missing = tmp_path / "no_data"
    cfg = SweepConfig(task="arith", data_dir=str(missing), out=str(tmp_path / "s"), steps=2)
    with pytest.raises(UserError, match=r"sweep workers exited with \[2, 2\]; rerun"):
        run_in_workers(cfg, 2, log=lambda s: None)
    err = capsys.readouterr().err
    for i in (0, 1):
        assert f"worker {i} exited with 2; the end of " in err
        assert f"worker_{i}.log" in err
    assert "error: " in err and "Traceback" not in err


def test_workers_start_on_different_programs_then_take_the_most_expensive_runs():
    from dsbs_jax.experiments.config import SweepConfig, plan_runs
    from dsbs_jax.experiments.workers import worker_order

    cfg = SweepConfig(task="arith", data_dir="d", out="o", seeds=2, fractions=(50, 100), steps=10)
    lengths = {"inputs": 48, "labels": 4, "rationales": 48}
    todo = plan_runs(cfg, "arith", "arith_dsbs", 100, lengths)
    orders = [worker_order(todo, i) for i in range(3)]
    for order in orders:
        assert sorted(map(id, order)) == sorted(map(id, todo))  # every run, once
    # Worker 0 starts on the dsbs program, worker 1 on the label-only one (fine-tuning and
    # distillation share it), worker 2 wraps around; after the first run, most expensive first.
    assert orders[0][0].method == "dsbs" and orders[2][0] is orders[0][0]
    assert orders[1][0].method in ("finetune", "distill") and not orders[1][0].pack
    for order in orders:
        costs = [p.steps * p.rows * p.target_length for p in order[1:]]
        assert costs == sorted(costs, reverse=True)
    assert worker_order([], 1) == []


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs an OS that pins processes to cores (Linux) and two cores",
)
def test_each_worker_process_sees_one_core_of_the_parents(tmp_path):
    """XLA sizes its thread pools to the cores a process may use: a worker sees one core."""
    import subprocess

    from dsbs_jax.experiments.workers import worker_command

    (tmp_path / "probe_cores.py").write_text(
        "import json, os, sys\nprint(json.dumps([sys.argv[1:], sorted(os.sched_getaffinity(0))]))\n"
    )
    cores = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for i in range(len(cores) + 1):  # the last one wraps around
        cmd = worker_command("workers.json", i, module="probe_cores")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        args, seen = json.loads(out)
        assert args == ["workers.json", str(i)]
        assert seen == [cores[i % len(cores)]]


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path, capsys):
    data_dir, _ = tiny_data
    out = tmp_path / "s"
    os.makedirs(out)
    with open(out / "sweep.json", "w") as f:
        json.dump({"core": {"task": "arith", "steps": 999}}, f)
    code = main(
        ["sweep", "arith", "--data_dir", data_dir, "--out", str(out), "--steps", "3",
         "--model", "micro", "--seeds", "1", "--fractions", "100"]
    )  # fmt: skip
    assert code == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(["sweep", "arith", "--data_dir", "x", "--out", str(tmp_path), "--methods",
                 "finetune,magic"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "magic" in err[0]
    assert main(["report", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("select", ["best_validation", "best_validation_loss"])
def test_best_validation_selection_scores_a_checked_step(tiny_data, tmp_path, select):
    from dsbs_jax.experiments.config import SweepConfig
    from dsbs_jax.experiments.runner import run_sweep

    data_dir, _ = tiny_data
    cfg = SweepConfig(
        task="arith", data_dir=data_dir, out=str(tmp_path / "sel"), methods=("distill",),
        fractions=(100,), seeds=1, steps=4, batch_size=8, model="micro", test_examples=8,
        select=select, select_every=2, validation_examples=8,
    )  # fmt: skip
    (r,) = run_sweep(cfg, log=lambda s: None)
    assert r.selected_step in (2, 4)  # the steps the hook checked
    assert f'"{select}"' in open(tmp_path / "sel" / "sweep.json").read()
    with pytest.raises(UserError, match="--select"):
        SweepConfig(task="arith", data_dir=data_dir, out=str(tmp_path), select="best")


def test_validation_loss_keeps_the_parameters_with_the_lowest_gold_answer_loss():
    """The selection loss is the gold answers' teacher-forced cross entropy (answer tokens and
    EOS, padding left out), and the hook keeps the parameters that scored lowest."""
    import types

    import jax
    import numpy as np

    from dsbs_jax.model.t5 import T5Config, Transformer

    vocab = types.SimpleNamespace(encode=lambda s: [ord(c) % 40 + 2 for c in s])
    examples = [{"input": "3 + 4 * 2", "gold_label": "14"}, {"input": "9 - 5", "gold_label": "4"}]
    model = Transformer(
        T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                 num_decoder_layers=1, mlp_dim=32)
    )  # fmt: skip
    hook = scoring.KeepBestOnValidationLoss(examples, vocab, {"inputs": 16, "labels": 4}, 1, {})
    assert hook.targets[0].tolist() == [*vocab.encode("14"), 1, 0]  # EOS, then padding
    assert hook.decoder_inputs[0].tolist() == [0, *hook.targets[0, :-1]]

    def init(seed):
        return model.init(jax.random.PRNGKey(seed), hook.inputs, hook.decoder_inputs,
                          hook.targets, enable_dropout=False)["params"]  # fmt: skip

    def by_hand(params):
        logits = model.apply({"params": params}, hook.inputs, hook.decoder_inputs, hook.targets,
                             enable_dropout=False)  # fmt: skip
        logp = np.asarray(jax.nn.log_softmax(logits))
        picked = np.take_along_axis(logp, hook.targets[..., None], -1)[..., 0]
        real = hook.targets > 0
        return -(picked * real).sum() / real.sum()

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    candidates = [init(seed) for seed in range(3)]
    seen = []
    for step, params in enumerate(candidates, start=1):
        hook.on_step(types.SimpleNamespace(model=model, mesh=mesh, rules=(), params=params,
                                           step=step))  # fmt: skip
        seen.append(by_hand(params))
        assert hook.best == pytest.approx(min(seen), rel=1e-5)
    best = int(np.argmin(seen))
    assert hook.best_step == best + 1
    kept = jax.tree.leaves(hook.params)
    for a, b in zip(kept, jax.tree.leaves(candidates[best]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_end_with_their_parent_however_it_ends(tmp_path, how):
    """A sweep's workers are started bound to it: when the parent process ends (a SIGTERM, or a
    SIGKILL that leaves it no chance to clean up), no worker is left running as an orphan."""
    import signal
    import subprocess
    import sys
    import time

    parent_code = (
        "import sys, time\n"
        "from dsbs_jax.experiments.workers import popen_bound_to_parent\n"
        "p = popen_bound_to_parent([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.send_signal(getattr(signal, how))
    parent.wait()
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), f"worker {worker} outlived its parent ({how})"


def test_a_worker_stopped_by_sigterm_runs_its_cleanup_at_exit(tmp_path):
    """What TensorFlow registers to run at exit (removing its generated files) still runs."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "cleaned"
    code = (
        "import atexit, sys, time\n"
        "from dsbs_jax.errors import exit_cleanly_on_sigterm\n"
        "exit_cleanly_on_sigterm()\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert marker.exists()


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
