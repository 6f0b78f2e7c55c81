"""Bad input through the CLI: one line on stderr, exit 2, and nothing already on disk changed."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from dsbs_jax import cli, run_dir
from dsbs_jax.train import checks

TRAIN = [
    "train",
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.MIXTURE_OR_TASK_NAME=toy_reverse",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}",
    "--gin.TRAIN_STEPS=2",
    "--gin.VOCAB_SIZE=0",
    "--gin.BATCH_SIZE=8",
    "--gin.EVAL_PERIOD=0",
]


@pytest.fixture(autouse=True)
def _fresh_gin():
    """Each CLI call here starts from no bindings, as a new process would."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under root with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_line(capsys, rc: int) -> str:
    """Asserts exit 2 and exactly one line on stderr; returns it."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.fixture
def existing_run(tmp_path) -> pathlib.Path:
    """A MODEL_DIR holding the record of an earlier run."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.gin").write_text("TRAIN_STEPS = 60\n")
    return model_dir


@pytest.mark.parametrize(
    ("binding", "needle"),
    [
        ("--gin.TRAIN_STEPS='abc'", "TRAIN_STEPS must be an integer, got 'abc'"),
        ("--gin.TRAIN_STEPS=0", "TRAIN_STEPS must be at least 1, got 0"),
        ("--gin.TRAIN_STEPS=-5", "TRAIN_STEPS must be at least 1, got -5"),
        ("--gin.BATCH_SIZE=0", "BATCH_SIZE must be at least 1, got 0"),
        ("--gin.BATCH_SIZE=2.5", "BATCH_SIZE must be an integer, got 2.5"),
        ("--gin.TASK_FEATURE_LENGTHS={'inputs': 24}", "TASK_FEATURE_LENGTHS has no 'targets'"),
        ("--gin.TRAIN_SPLIT='trian'", "toy_reverse has no split 'trian'"),
        (
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 5, 'targets': 12}",
            "have inputs longer than TASK_FEATURE_LENGTHS['inputs']=5 tokens",
        ),
        ("--gin.MIXTURE_OR_TASK_NAME=no_such_task", "unknown task or mixture 'no_such_task'"),
        ("--gin.train.log_every='x'", "train.log_every must be an integer"),
        (
            "--gin.TRAIN_STEP=7",
            "--gin.TRAIN_STEP: no gin file or setting uses the macro TRAIN_STEP; did you mean "
            "--gin.TRAIN_STEPS?",
        ),
        (
            "--gin.learning_rate_schedule.base_learning_rate=-0.001",
            "learning_rate_schedule.base_learning_rate: must be a number >= 0, got -0.001",
        ),
        (
            "--gin.learning_rate_schedule.base_learning_rate=nan",
            "learning_rate_schedule.base_learning_rate: must be a number >= 0, got 'nan'",
        ),
        (
            "--gin.learning_rate_schedule.base_learning_rate=1e999",
            "learning_rate_schedule.base_learning_rate: must be a number >= 0, got inf",
        ),
        ("--gin.TRAIN_SPLIT='train[:200%]'", "TRAIN_SPLIT 'train[:200%]': not a TFDS split"),
        ("--gin.INITIAL_CHECKPOINT_PATH='/no/such/ckpt'", "/no/such/ckpt: no such checkpoint"),
        ("--gin.BATCH_SIZE=7", "BATCH_SIZE 7 is not divisible by the mesh's data axis (8)"),
    ],
)
def test_train_refuses_bad_settings_before_writing(existing_run, capsys, binding, needle):
    before = snapshot(existing_run)
    rc = cli.main([*TRAIN, f"--gin.MODEL_DIR={existing_run}", binding])
    assert needle in one_line(capsys, rc)
    assert snapshot(existing_run) == before


def test_train_model_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "model_dir"
    path.write_text("not a directory")
    rc = cli.main([*TRAIN, f"--gin.MODEL_DIR={path}"])
    assert f"MODEL_DIR {path}: is a file, expected a directory" in one_line(capsys, rc)
    assert path.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_train_model_dir_that_cannot_be_written(tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        rc = cli.main([*TRAIN, f"--gin.MODEL_DIR={parent / 'run'}"])
        assert "cannot create it" in one_line(capsys, rc)
    finally:
        parent.chmod(0o700)


def _svamp(tmp_path, gold: list[str], n_outputs: int | None = None) -> pathlib.Path:
    src = tmp_path / "svamp"
    (src / "llm").mkdir(parents=True)
    (src / "svamp_train.json").write_text("\n".join(gold) + "\n")
    outputs = ["R. The answer is (2)."] * (n_outputs or len(gold))
    (src / "llm" / "train_CoT_0.json").write_text(json.dumps(outputs))
    return src


GOOD = json.dumps({"input": "q", "label": "( 1.0 + 1.0 )"})


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"input": "q", "label": ["( 1.0 + 1.0 )"]}', "label must be text or a number, got list"),
        ('{"input": "q", "label": NaN}', "NaN is not a JSON value"),
        ('{"input": "q", "label": Infinity}', "Infinity is not a JSON value"),
    ],
)
def test_prepare_refuses_labels_that_are_not_text(tmp_path, capsys, bad_line, needle):
    src = _svamp(tmp_path, [GOOD, bad_line])
    out = tmp_path / "out"
    rc = cli.main(["prepare", "svamp", "--source_dir", str(src), "--data_dir", str(out)])
    line = one_line(capsys, rc)
    assert "svamp_train.json:2:" in line and needle in line
    assert not out.exists()


def test_prepare_input_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"id": "a", "input": "x"}\n{"id": "b", "input": "\xff"}\n')
    rc = cli.main(["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(tmp_path)])
    assert f"{path}:2: not UTF-8 text" in one_line(capsys, rc)


def test_prepare_directory_where_a_file_is_expected(tmp_path, capsys):
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    rc = cli.main(["prepare", "svamp", "--records", f"train={folder}", "--data_dir", str(tmp_path)])
    assert one_line(capsys, rc).endswith(f"{folder}: is a directory, expected a file")


@pytest.mark.parametrize("target", ["self", "missing"])
def test_stats_on_a_gold_file_that_is_a_broken_link(tmp_path, capsys, target):
    """A link to itself or to nothing is not a missing split: one line names it."""
    src = _svamp(tmp_path, [GOOD])
    gold = src / "svamp_train.json"
    gold.unlink()
    gold.symlink_to(gold if target == "self" else tmp_path / "gone.json")
    rc = cli.main(["stats", "svamp", "--source_dir", str(src)])
    assert one_line(capsys, rc).endswith(f"{gold}: a link that leads nowhere or to itself")


def test_prepare_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    """TFDS makes an empty tmp*tfds folder for a builder with no dataset_info yet, and keeps it."""
    import tempfile

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    src = _svamp(tmp_path, [GOOD] * 12)
    assert (
        cli.main(["prepare", "svamp", "--source_dir", str(src), "--data_dir", str(tmp_path)]) == 0
    )
    assert list(system_tmp.iterdir()) == []
    assert tempfile.tempdir == str(system_tmp)


def test_prepare_an_empty_records_file(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text("\n")
    out = tmp_path / "out"
    rc = cli.main(["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(out)])
    assert one_line(capsys, rc).endswith(f"{path}: no records (the file is empty)")
    assert not out.exists()


def test_prepare_too_few_records_to_carve_validation(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "a", "input": "q", "gold_label": "2"}) + "\n")
    out = tmp_path / "out"
    rc = cli.main(["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(out)])
    assert "1 record(s) are too few to carve a 10% validation split" in one_line(capsys, rc)
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_prepare_file_that_cannot_be_read(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "input": "x"}\n')
    path.chmod(0)
    rc = cli.main(["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(tmp_path)])
    assert f"{path}: Permission denied" in one_line(capsys, rc)


def test_card_with_an_empty_answer_marker(tmp_path, capsys):
    from dsbs_jax.data.cards import BUILTIN_CARD_DIR

    text = (BUILTIN_CARD_DIR / "svamp.yaml").read_text()
    card = tmp_path / "mine.yaml"
    card.write_text(text.replace('marker: "The answer is"', 'marker: ""'))
    src = _svamp(tmp_path, [GOOD])
    rc = cli.main(["stats", str(card), "--source_dir", str(src)])
    assert f"{card}: field 'parse.marker': must be non-empty text" in one_line(capsys, rc)


@pytest.mark.parametrize("command", ["prepare", "teach"])
def test_card_name_that_would_leave_the_output_folder(tmp_path, capsys, command):
    """A card's name becomes folder names: one that climbs out of --data_dir / --out is refused
    before anything is written."""
    from dsbs_jax.data.cards import BUILTIN_CARD_DIR

    text = (BUILTIN_CARD_DIR / "svamp.yaml").read_text()
    card = tmp_path / "cards" / "mine.yaml"
    card.parent.mkdir()
    card.write_text(text.replace("name: svamp", 'name: "x/../../escaped"', 1))
    src = _svamp(tmp_path, [GOOD])
    out = tmp_path / "a" / "b"
    if command == "prepare":
        argv = ["prepare", str(card), "--source_dir", str(src), "--data_dir", str(out)]
    else:
        argv = ["teach", str(card), "--backend", "simulated", "--out", str(out)]
    rc = cli.main(argv)
    assert f"{card}: field 'name': 'x/../../escaped' is not a dataset name" in one_line(capsys, rc)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cards", src.name])


def test_export_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rc = cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert f"--out {out}: is a file, expected a directory" in one_line(capsys, rc)
    assert out.read_text() == "keep me"


def test_lengths_that_cut_some_examples_say_how_many(capsys):
    import seqio

    import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)

    task = seqio.get_mixture_or_task("toy_reverse")
    checks.check_lengths_fit([task], {"inputs": 14, "targets": 12}, "train", limit=50)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("toy_reverse: "), out
    cut = int(out[0].split()[1])
    assert 0 < cut < 50 and "of 50 train examples checked have inputs longer than" in out[0]
    checks.check_lengths_fit([task], {"inputs": 24, "targets": 12}, "train", limit=50)
    assert capsys.readouterr().out == ""


def test_config_gin_is_left_alone_by_a_run_that_trains_nothing(tmp_path):
    (tmp_path / "config.gin").write_text("TRAIN_STEPS = 60\n")
    assert not run_dir.write_config(str(tmp_path), "TRAIN_STEPS = 60  # again\n", 60, 60)
    assert (tmp_path / "config.gin").read_text() == "TRAIN_STEPS = 60\n"
    assert run_dir.write_config(str(tmp_path), "TRAIN_STEPS = 90\n", 60, 90)
    assert (tmp_path / "config.gin").read_text() == "TRAIN_STEPS = 90\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.gin"]  # no temporary file left


def test_metrics_rows_past_the_resumed_step_are_dropped(tmp_path):
    (tmp_path / "train").mkdir()
    path = tmp_path / "train" / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (10, 20, 30, 40)]
    path.write_text("\n".join(rows) + '\n{"step": 5')  # the last line cut by a kill
    assert run_dir.truncate_metrics(str(tmp_path), 20) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [10, 20]
    assert run_dir.truncate_metrics(str(tmp_path), 20) == 0


def test_tfds_data_dir_is_honoured_last(monkeypatch, tmp_path):
    from dsbs_jax.data import paths

    monkeypatch.delenv("DSBS_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert paths.resolve_data_dir() == str(tmp_path / "tfds")
    monkeypatch.setenv("DSBS_DATA_DIR", str(tmp_path / "dsbs"))
    assert paths.resolve_data_dir() == str(tmp_path / "dsbs")
    assert paths.resolve_data_dir(tmp_path / "flag") == str(tmp_path / "flag")


def test_stderr_is_one_line_without_start_up_chatter(tmp_path):
    """A real process (TensorFlow imported for the first time): the error is all of stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[1])
    argv = [*TRAIN, f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.TRAIN_STEPS='abc'"]
    proc = subprocess.run(
        [sys.executable, "-m", "dsbs_jax.cli", *argv], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == "dsbs train: error: TRAIN_STEPS must be an integer, got 'abc'\n"
    assert not (tmp_path / "run").exists()


def _records(path: pathlib.Path, n: int) -> None:
    from dsbs_jax.records import Record, write_records

    write_records(path, [Record(id=f"r{i}", input=f"question {i} " * 20) for i in range(n)])


def _train_count(data_dir: pathlib.Path) -> int:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(data_dir / "dsbs_svamp" / "1.0.0"))
    return sum(1 for _ in builder.as_dataset(split="train"))


@pytest.mark.parametrize(("delay", "how"), [(0.0, "SIGKILL"), (0.4, "SIGKILL"), (0.4, "SIGTERM")])
def test_prepare_killed_over_an_existing_dataset_leaves_one(tmp_path, delay, how):
    """A kill while `dsbs prepare` writes (bench/prepare_kill.py does 10 at random moments).
    A SIGTERM also lets it remove its aside folder; a SIGKILL leaves that to the next run."""
    data_dir = tmp_path / "data"
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    _records(old, 40)
    _records(new, 3000)
    argv = ["prepare", "svamp", "--data_dir", str(data_dir), "--records"]
    assert cli.main([*argv, f"train={old}"]) == 0
    assert _train_count(data_dir) == 36  # 10% carved out for validation
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsbs_jax.cli", *argv, f"train={new}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith(b"writing"):
            break
    time.sleep(delay)
    proc.send_signal(getattr(signal, how))
    proc.wait()
    assert _train_count(data_dir) in (36, 2700)  # the old dataset or the new one
    if how == "SIGTERM":
        assert proc.returncode in (0, 143)
        assert sorted(p.name for p in data_dir.iterdir()) == ["dsbs_svamp"]


def _records_file(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rationale": None}, "rationale"),
        ({"rationale": "  "}, "rationale"),
        ({"teacher_label": ""}, "teacher_label"),
        ({"teacher_label": None}, "teacher_label"),
    ],
)
def test_prepare_refuses_an_ok_record_with_nothing_to_train_on(tmp_path, capsys, change, field):
    good = {"id": "a", "input": "q", "gold_label": "(1)", "rationale": "r", "teacher_label": "(1)"}
    bad = {**good, "id": "b", **change}
    path = _records_file(
        tmp_path / "train.jsonl", [{**good, "status": "ok"}, {**bad, "status": "ok"}]
    )
    out = tmp_path / "out"
    rc = cli.main(["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(out)])
    line = one_line(capsys, rc)
    assert f"{path}:2: field '{field}': missing or empty in a record with status 'ok'" in line
    assert not out.exists()


def test_teacher_labels_outside_the_label_set_are_kept_not_trained_on(tmp_path):
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.sources import read_jsonl

    card = load_card("esnli")
    rows = [
        {"premise": "p", "hypothesis": "h", "label": 0, "raw": "r. Answer: entailment"},
        {"premise": "p", "hypothesis": "h2", "label": "neutral", "raw": "r. Answer: maybe"},
        {"premise": "p", "hypothesis": "h3", "label": 2, "teacher_label": "no", "rationale": "r"},
    ]
    records = read_jsonl(card, _records_file(tmp_path / "x.jsonl", rows))
    assert [r.status for r in records] == ["ok", "unknown_label", "unknown_label"]
    assert [r.teacher_label for r in records] == ["entailment", "maybe", "no"]
    bad_gold = [{"premise": "p", "hypothesis": "h", "label": "definitely"}]
    path = _records_file(tmp_path / "gold.jsonl", bad_gold)
    with pytest.raises(cli.UserError, match=r"gold.jsonl:1: field 'label': label 'definitely' is"):
        read_jsonl(card, path)


def test_gold_labels_the_metric_cannot_read_are_left_out_and_said(tmp_path, capsys):
    unreadable = json.dumps({"input": "q2", "label": "( 1.0 + )"})
    src = _svamp(tmp_path, [GOOD, unreadable])  # the teacher says (2) to both
    rc = cli.main(["stats", "svamp", "--source_dir", str(src), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["train"]["teacher_accuracy"] == 100.0  # 1 of 1, not 1 of 2
    assert "svamp train: 1 gold label(s) the metric cannot read were left out" in captured.err


def test_teach_refuses_a_teacher_file_that_answers_no_input(tmp_path, capsys):
    src = _svamp(tmp_path, [GOOD, GOOD.replace('"q"', '"q2"')])
    teacher = _records_file(
        tmp_path / "t.jsonl", [{"id": "other-1", "raw": "R. The answer is (2)."}]
    )
    out = tmp_path / "teach"
    argv = ["teach", "svamp", "--source_dir", str(src), "--backend", "files"]
    rc = cli.main([*argv, "--teacher_file", str(teacher), "--out", str(out)])
    line = one_line(capsys, rc)
    assert f"{teacher}: no output matches any of the 2 inputs" in line
    assert not out.exists()
    # One of two matched: it runs, and says how many have no output.
    teacher = _records_file(
        tmp_path / "t.jsonl", [{"input": "q2", "label": "x", "raw": "R. The answer is (2)."}]
    )
    rc = cli.main([*argv, "--teacher_file", str(teacher), "--out", str(out), "--no_progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"teach: 1 of 2 inputs have no output in {teacher} (status no_teacher)" in captured.out


def test_prepare_refuses_one_file_as_train_and_test(tmp_path, capsys):
    row = {"id": "a", "input": "q", "gold_label": "(1)", "status": "no_teacher"}
    path = _records_file(tmp_path / "all.jsonl", [row])
    out = tmp_path / "out"
    argv = ["prepare", "svamp", "--records", f"train={path}", "--records", f"test={path}"]
    rc = cli.main([*argv, "--data_dir", str(out)])
    assert f"--records: {path} is both the train and the test split" in one_line(capsys, rc)
    assert not out.exists()


def test_out_of_memory_is_one_line_with_what_would_help(tmp_path, capsys, monkeypatch):
    """XLA's RESOURCE_EXHAUSTED (here raised by the command, as the step's allocation would)
    is one line and exit 2: what the step asked for, what this machine has, and what helps."""
    import jax

    from dsbs_jax.commands import train as train_command

    def step_too_big(args):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 26700000000 bytes."
        )

    monkeypatch.setattr(train_command, "run", step_too_big)
    rc = cli.main([*TRAIN, f"--gin.MODEL_DIR={tmp_path / 'run'}"])
    line = one_line(capsys, rc)
    assert line.startswith("dsbs train: error: out of memory: the step asked for 24.9 GiB")
    assert "GiB; try a smaller per-device batch (--gin.BATCH_SIZE)" in line
    assert "--gin.EVAL_PERIOD=0" in line and "`dsbs compile`" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device", "/data/x.tfrecord"),
        RuntimeError(
            'ResourceExhaustedError: Failed to finalize writing of split "train": '
            "/data/x.tfrecord; No space left on device"
        ),
        ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "/data/x.tfrecord": Failed to write '
            "15501 bytes to file 7: No space left on device [source locations='...']"
        ),
    ],
)
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, error):
    """However a library wraps ENOSPC (TFDS, TensorStore), the user reads one line."""
    from dsbs_jax.data import prepare as prepare_lib

    def disk_full(*args, **kwargs):
        raise error

    monkeypatch.setattr(prepare_lib, "write_tfds", disk_full)
    src = _svamp(tmp_path, [GOOD] * 12)
    rc = cli.main(["prepare", "svamp", "--source_dir", str(src), "--data_dir", str(tmp_path)])
    assert one_line(capsys, rc) == (
        "dsbs prepare: error: no space left on the device writing /data/x.tfrecord; free some "
        "space (or choose another output folder) and run the same command again: what was "
        "complete before is kept"
    )


def test_a_failed_save_stops_the_run(tmp_path, capsys, monkeypatch):
    """Training does not go on past a checkpoint that could not be written."""
    from dsbs_jax.train import checkpoints

    saved = []
    real_save = checkpoints.Checkpointer.save

    def save(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/run/'
                             'checkpoint_4/params": No space left on device')  # fmt: skip
        saved.append(step)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
    argv = [*TRAIN, f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.TRAIN_STEPS=8",
            "--gin.train.checkpoint_period=2", "--gin.train.log_every=1"]  # fmt: skip
    rc = cli.main(argv)
    line = one_line(capsys, rc)
    assert line.startswith("dsbs train: error: no space left on the device writing ")
    assert saved == [2]
    rows = (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(r)["step"] for r in rows) <= 4


@pytest.mark.parametrize(
    ("flags", "needle"),
    [(["--steps", "0"], "--steps"), (["--fractions", "150"], "--fractions"),
     (["--workers", "0"], "--workers")],
)  # fmt: skip
def test_quickstart_checks_its_settings_before_writing(tmp_path, capsys, flags, needle):
    out = tmp_path / "qs"
    rc = cli.main(["quickstart", "--out", str(out), *flags])
    assert needle in one_line(capsys, rc)
    assert not out.exists()


def test_inspect_and_vocab_of_a_dataset_never_prepared_name_what_is_missing(tmp_path, capsys):
    """What is missing first (the prepared dataset), and the commands that make it; `dsbs vocab`
    says nothing about training before it has found the data."""
    data = tmp_path / "data"
    data.mkdir()  # a data folder, where svamp was never prepared
    rc = cli.main(["inspect", "svamp_dsbs", "--data_dir", str(data)])
    line = one_line(capsys, rc)
    assert f"{data}/dsbs_svamp: no prepared dataset (and so no vocabulary)" in line
    assert f"`dsbs prepare svamp --source_dir DIR --data_dir {data}`, then `dsbs vocab" in line
    rc = cli.main(["vocab", "svamp", "--data_dir", str(data)])
    captured = capsys.readouterr()
    assert rc == 2 and "training a" not in captured.out, captured
    assert f"{data}/dsbs_svamp: no prepared dataset" in captured.err
