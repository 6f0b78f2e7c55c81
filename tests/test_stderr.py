"""Each command as a user runs it (a process of its own, default log level): stderr holds only
our lines. TensorFlow, absl, JAX, libtpu, orbax and asyncio print nothing there unless
`dsbs --verbose` (README, "Bad input").

The environment is a user's: no TF_CPP_MIN_LOG_LEVEL and no CUDA_VISIBLE_DEVICES (the test
session sets both for its own process), JAX on the CPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--gin_file=models/t5_1_1_tiny.gin", "--gin.VOCAB_SIZE=0"]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "DSBS_VERBOSE")
    }
    env["PYTHONPATH"] = str(REPO)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _dsbs(*argv: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsbs_jax.cli", *argv],
        env=_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_no_command_prints_a_line_that_is_not_ours(shared_data, tmp_path):
    data = tmp_path / "data"
    run = tmp_path / "run"
    (tmp_path / "in.jsonl").write_text(json.dumps({"input": "Tom has 3 apples. 2 more?"}) + "\n")
    damaged = tmp_path / "damaged"
    lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 64}"
    commands: list[tuple[str, list[str], int]] = [
        ("tasks", ["tasks"], 0),
        ("stats", ["stats", "svamp", "--source_dir", str(shared_data / "svamp")], 0),
        ("prepare", ["prepare", "svamp", "--source_dir", str(shared_data / "svamp"),
                     "--data_dir", str(data)], 0),
        ("vocab", ["vocab", "svamp", "--data_dir", str(data), "--vocab_size", "400"], 0),
        ("inspect", ["inspect", "svamp_dsbs", "--data_dir", str(data), "--max_examples", "20"], 0),
        ("train", ["train", *TINY, f"--tfds_data_dir={data}", "--gin_file=runs/dsbs.gin",
                   f"--gin.MODEL_DIR={run}", "--gin.MIXTURE_OR_TASK_NAME=svamp_dsbs", lengths,
                   "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=2",
                   "--gin.train.eval_examples=4", "--gin.train.test_split='test[:4]'"], 0),
        ("eval", ["eval", *TINY, f"--tfds_data_dir={data}", "--gin_file=runs/eval.gin",
                  f"--gin.CHECKPOINT_PATH={run}", "--gin.MIXTURE_OR_TASK_NAME=svamp_dsbs",
                  "--gin.EVAL_EXAMPLES=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"], 0),
        ("predict", ["predict", *TINY, f"--tfds_data_dir={data}", "--gin_file=runs/infer.gin",
                     f"--gin.CHECKPOINT_PATH={run}", "--gin.TASK=svamp", "--input",
                     str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "pred.jsonl"),
                     "--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8", "--gin.BATCH_SIZE=8"], 0),
        ("export hf", ["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")], 0),
        ("compile", ["compile", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin",
                     "--gin.MIXTURE_OR_TASK_NAME=svamp_dsbs", "--gin.VOCAB_SIZE=512",
                     f"--tfds_data_dir={data}", "--topology", "v5e:2x2", lengths,
                     "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=10"], 0),
        ("export damaged", ["export", "--format", "t5x", "--checkpoint", str(damaged),
                            "--out", str(tmp_path / "t5x")], 2),
    ]  # fmt: skip
    foreign: dict[str, list[str]] = {}
    ran = []
    for name, argv, expected_rc in commands:
        if name == "export damaged":  # a checkpoint whose array files are gone
            shutil.copytree(run, damaged)
            shutil.rmtree(damaged / "checkpoint_2" / "params" / "d")
        proc = _dsbs(*argv, cwd=tmp_path)
        assert proc.returncode == expected_rc, (name, proc.stderr[-3000:])
        ran.append(name)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if expected_rc == 2:
            assert len(lines) == 1 and lines[0].startswith("dsbs export: error: "), lines
            assert "is damaged" in lines[0]
        elif lines:
            foreign[name] = lines[:5]
    assert not foreign, foreign
    assert len(ran) == len(commands)
