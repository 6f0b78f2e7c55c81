"""The CLI end to end on the released svamp data: prepare, vocab, train, eval, predict."""

from __future__ import annotations

import json
import pathlib

import pytest

from dsbs_jax import cli


@pytest.fixture(scope="module")
def svamp_data(shared_data, tmp_path_factory) -> pathlib.Path:
    data_dir = tmp_path_factory.mktemp("svamp_data")
    assert (
        cli.main(
            [
                "prepare",
                "svamp",
                "--source_dir",
                str(shared_data / "svamp"),
                "--data_dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert cli.main(["vocab", "svamp", "--data_dir", str(data_dir), "--vocab_size", "400"]) == 0
    return data_dir


def test_prepare_train_eval_predict(svamp_data, tmp_path, capsys):
    model_dir = tmp_path / "model"
    common = [
        "--gin_file=models/t5_1_1_tiny.gin",
        f"--tfds_data_dir={svamp_data}",
        "--gin.VOCAB_SIZE=0",
    ]
    rc = cli.main(
        [
            "train",
            *common,
            "--gin_file=runs/dsbs.gin",
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.MIXTURE_OR_TASK_NAME=svamp_dsbs",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 96}",
            "--gin.TRAIN_STEPS=30",
            "--gin.BATCH_SIZE=8",
            "--gin.EVAL_PERIOD=30",
            "--gin.train.eval_examples=8",
            "--gin.train.test_split='test[:8]'",
            "--gin.train.log_every=10",
        ]
    )
    assert rc == 0
    assert (model_dir / "checkpoint_30" / "params").is_dir()
    assert "MIXTURE_OR_TASK_NAME = 'svamp_dsbs'" in (model_dir / "config.gin").read_text()
    rows = [json.loads(x) for x in (model_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert {"loss/svamp_label", "loss/svamp_rationale"} <= set(rows[-1])
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert list((model_dir / "train").glob("events.out.tfevents.*"))
    assert list((model_dir / "eval").glob("events.out.tfevents.*"))
    # validation and the test slice, both scored at step 30: one predictions file each, and
    # each metrics line names its split
    inference = model_dir / "inference_eval"
    assert (inference / "svamp_label-validation-000030.jsonl").is_file()
    assert len((inference / "svamp_label-test_8-000030.jsonl").read_text().splitlines()) == 8
    lines = [
        json.loads(x) for x in (inference / "svamp_label-metrics.jsonl").read_text().splitlines()
    ]
    assert [(m["step"], m["split"]) for m in lines] == [(30, "validation"), (30, "test[:8]")]
    assert "finished at step 30" in capsys.readouterr().out

    rc = cli.main(
        [
            "eval",
            *common,
            "--gin_file=runs/eval.gin",
            f"--gin.CHECKPOINT_PATH={model_dir}",
            "--gin.MIXTURE_OR_TASK_NAME=svamp_label",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 24}",
            "--gin.EVAL_EXAMPLES=16",
            "--json",
        ]
    )
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["svamp_label/accuracy"] <= 100.0

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        json.dumps({"input": "Tom has 3 apples and buys 4 more.\nHow many apples does he have?"})
        + "\n"
        + json.dumps({"id": "b", "input": "There are 12 birds. 5 fly away.\nHow many are left?"})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    rc = cli.main(
        [
            "predict",
            *common,
            "--gin_file=runs/infer.gin",
            f"--gin.CHECKPOINT_PATH={model_dir}",
            "--gin.TASK=svamp",
            "--gin.INPUT_LENGTH=64",
            "--gin.TARGET_LENGTH=12",
            "--input_file",
            str(inputs),
            "--output_file",
            str(out),
            "--explain",
        ]
    )
    assert rc == 0
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert [p["id"] for p in preds] == ["1", "b"]  # ids are text: the line number if none
    assert all(isinstance(p["prediction"], str) and isinstance(p["rationale"], str) for p in preds)

    # export: sizes from MODEL_DIR/config.gin, and the run's own vocabulary (svamp's) by default
    import gin

    gin.clear_config()
    out_dir = tmp_path / "hf"
    argv = ["export", "--checkpoint", str(model_dir), "--out", str(out_dir)]
    assert cli.main([*argv, f"--tfds_data_dir={svamp_data}"]) == 0
    spm = svamp_data / "dsbs_svamp" / "spm.model"
    assert (out_dir / "spiece.model").read_bytes() == spm.read_bytes()
    assert f"spiece.model <- {spm}" in capsys.readouterr().out


def test_train_bad_input_is_one_line(tmp_path, capsys):
    rc = cli.main(["train", "--gin_file=runs/does_not_exist.gin"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does_not_exist.gin" in err[0]
    rc = cli.main(
        [
            "train",
            "--gin_file=models/t5_1_1_tiny.gin",
            "--gin_file=runs/dsbs.gin",
            f"--gin.MODEL_DIR={tmp_path}",
            "--gin.MIXTURE_OR_TASK_NAME=no_such_task",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}",
            "--gin.TRAIN_STEPS=1",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_task" in err[0]


@pytest.mark.parametrize(
    "command, gin_file, missing",
    [("train", "runs/dsbs.gin", "MODEL_DIR"), ("eval", "runs/eval.gin", "CHECKPOINT_PATH")],
)
def test_missing_required_macro_is_one_line(capsys, command, gin_file, missing):
    bindings = {
        "MODEL_DIR": "/tmp/m",
        "CHECKPOINT_PATH": "/tmp/m",
        "MIXTURE_OR_TASK_NAME": "svamp_dsbs",
        "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}",
        "TRAIN_STEPS": "1",
    }
    bindings.pop(missing)
    argv = [command, "--gin_file=models/t5_1_1_tiny.gin", f"--gin_file={gin_file}"]
    rc = cli.main([*argv, *(f"--gin.{k}={v}" for k, v in bindings.items())])
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the file marking it %gin.REQUIRED (runs/dsbs.gin includes runs/base.gin)
    where = "runs/base.gin" if command == "train" else gin_file
    assert f"{where}:" in err and f"{missing} is %gin.REQUIRED" in err


def test_predict_without_its_run_gin_is_one_line(capsys, tmp_path):
    # A model gin alone (a training run's config.gin, say) leaves predict_file's arguments unset.
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "x"}\n')
    rc = cli.main(
        ["predict", "--gin_file=models/t5_1_1_tiny.gin", f"--input_file={inputs}",
         f"--output_file={tmp_path / 'out.jsonl'}"]
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "predict_file" in err and "checkpoint_path" in err and "runs/infer.gin" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_user_error_inside_tf_data_tracing_prints_its_own_line():
    from dsbs_jax.errors import UserError

    traced = UserError(
        'in user code:\n\n    File "seqio/vocabularies.py", line 1\n'
        "    UserError: /d/dsbs_svamp/spm.model: no vocabulary; train one with `dsbs vocab`\n"
    )
    assert (
        cli._one_line(traced)
        == "/d/dsbs_svamp/spm.model: no vocabulary; train one with `dsbs vocab`"
    )
    assert (
        cli._one_line(UserError("x.gin: not found\n  In call to configurable 'train'"))
        == "x.gin: not found"
    )
