"""Bad input and faults, each run as a user would (a `dsbs` process, default log level), and how
each ended: `clean` (the expected exit code, and stderr only our lines: one `dsbs CMD: error:`
line for a refusal), `chatter` (the right outcome, but a line that is not ours on stderr),
`traceback`, or `wrong` (exit code or outcome not as expected).

    python bench/fault_cases.py [--only NAME,...] [--keep DIR]

The cases are those of the third pass on faults (issue 26): a broken link as records, datasets
never prepared, a card name that climbs out of its folder, records that train on nothing, labels
outside the card's set, settings gin cannot use, an empty records file, a damaged checkpoint, a
results line of the wrong type, a full disk (a 3 MB tmpfs: root only, else skipped), settings
checked before writing. Prints one line per case and the count of clean ones.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
TOY = [
    "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin",
    "--gin.MIXTURE_OR_TASK_NAME=toy_reverse", "--gin.VOCAB_SIZE=0",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}", "--gin.TRAIN_STEPS=4",
    "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.train.test_split=None",
]  # fmt: skip
GOOD = {"input": "Tom has 1 apple and gets 1 more. How many?", "label": "( 1.0 + 1.0 )"}
OK_RECORD = {"id": "a", "input": "q", "gold_label": "2", "rationale": "r", "teacher_label": "2",
             "status": "ok"}  # fmt: skip


@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[pathlib.Path], list[str]]  # writes what it needs in the folder; the argv
    rc: int = 2
    needle: str = ""  # in stderr (refusals) or stdout (rc 0)
    check: Callable[[pathlib.Path], bool] | None = None  # what must hold on disk afterwards
    needs_root: bool = False
    free_kb: int = 120  # what a full disk leaves (needs_root cases)


def _env() -> dict[str, str]:
    drop = ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "DSBS_VERBOSE", "DSBS_DATA_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # a mesh with data 2
    return env


def _svamp(d: pathlib.Path, gold: list[dict], raw: str = "R. The answer is (2).") -> pathlib.Path:
    src = d / "svamp"
    (src / "llm").mkdir(parents=True, exist_ok=True)
    (src / "svamp_train.json").write_text("".join(json.dumps(g) + "\n" for g in gold))
    (src / "llm" / "train_CoT_0.json").write_text(json.dumps([raw] * len(gold)))
    return src


def _jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepared(d: pathlib.Path) -> pathlib.Path:
    """svamp from 40 good records, prepared under d/data."""
    src = _svamp(d, [GOOD] * 40)
    subprocess.run(
        [sys.executable, "-m", "dsbs_jax.cli", "prepare", "svamp", "--source_dir", str(src),
         "--data_dir", str(d / "data")],
        env=_env(), capture_output=True, check=True,
    )  # fmt: skip
    return d / "data"


def _trained(d: pathlib.Path) -> pathlib.Path:
    run = d / "run"
    subprocess.run(
        [sys.executable, "-m", "dsbs_jax.cli", "train", *TOY, f"--gin.MODEL_DIR={run}"],
        env=_env(), capture_output=True, check=True,
    )  # fmt: skip
    return run


def _card(d: pathlib.Path, name: str) -> pathlib.Path:
    text = (REPO / "tasks" / "svamp.yaml").read_text().replace("name: svamp", f"name: {name}", 1)
    path = d / "cards" / "mine.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _self_link(d: pathlib.Path) -> list[str]:
    src = _svamp(d, [GOOD])
    gold = src / "svamp_train.json"
    gold.unlink()
    gold.symlink_to(gold)
    return ["stats", "svamp", "--source_dir", str(src)]


def _records_case(record: dict) -> Callable[[pathlib.Path], list[str]]:
    def setup(d: pathlib.Path) -> list[str]:
        path = _jsonl(d / "train.jsonl", [record] * 20)
        return ["prepare", "svamp", "--records", f"train={path}", "--data_dir", str(d / "out")]

    return setup


def _train_case(*bindings: str, model_dir: Callable | None = None):
    def setup(d: pathlib.Path) -> list[str]:
        md = model_dir(d) if model_dir else d / "run"
        return ["train", *TOY, f"--gin.MODEL_DIR={md}", *bindings]

    return setup


def _file_at(d: pathlib.Path) -> pathlib.Path:
    (d / "afile").write_text("keep")
    return d / "afile"


def _damaged_export(d: pathlib.Path) -> list[str]:
    run = _trained(d)
    for step in run.glob("checkpoint_*"):
        shutil.rmtree(step / "params" / "d", ignore_errors=True)
    return ["export", "--format", "t5x", "--checkpoint", str(run), "--out", str(d / "x")]


def _results_wrong_type(d: pathlib.Path) -> list[str]:
    row = {"method": "dsbs", "fraction": 100.0, "seed": 0, "train_examples": 10, "steps": 5,
           "accuracy": "high"}  # fmt: skip
    (d / "results.jsonl").write_text(json.dumps(row) + "\n")
    return ["report", str(d)]


@contextlib.contextmanager
def _tmpfs(d: pathlib.Path, free_kb: int):
    mount = d / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        with open(mount / "fill", "wb") as f:
            f.write(b"\0" * (3 * 1024 - free_kb) * 1024)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _teacher_files_match_nothing(d: pathlib.Path) -> list[str]:
    src = _svamp(d, [GOOD, GOOD | {"input": "q2"}])
    t = _jsonl(d / "t.jsonl", [{"id": "other", "raw": "R. The answer is (2)."}])
    return ["teach", "svamp", "--source_dir", str(src), "--backend", "files", "--teacher_file",
            str(t), "--out", str(d / "teach")]  # fmt: skip


def _same_file(d: pathlib.Path) -> list[str]:
    path = _jsonl(d / "all.jsonl", [OK_RECORD | {"id": f"r{i}"} for i in range(20)])
    return ["prepare", "svamp", "--records", f"train={path}", "--records", f"test={path}",
            "--data_dir", str(d / "out")]  # fmt: skip


def _made(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _not_written(name: str) -> Callable[[pathlib.Path], bool]:
    return lambda d: not (d / name).exists()


CASES = [
    Case("stats: gold file a link to itself", _self_link, needle="leads nowhere or to itself"),
    Case("inspect: dataset never prepared",
         lambda d: ["inspect", "svamp_dsbs", "--data_dir", str(_made(d / "nothing"))],
         needle="dsbs prepare"),
    Case("vocab: dataset never prepared",
         lambda d: ["vocab", "svamp", "--data_dir", str(_made(d / "nothing"))],
         needle="dsbs prepare"),
    Case("prepare: card name climbs out",
         lambda d: ["prepare", str(_card(d, '"x/../../escaped"')), "--source_dir",
                    str(_svamp(d, [GOOD])), "--data_dir", str(d / "a" / "b")],
         needle="is not a dataset name", check=lambda d: not (d / "escaped").exists()),
    Case("teach: card name climbs out",
         lambda d: ["teach", str(_card(d, '"x/../../escaped"')), "--backend", "simulated",
                    "--out", str(d / "a" / "b")],
         needle="is not a dataset name", check=lambda d: not (d / "escaped").exists()),
    Case("prepare: ok record, no rationale",
         _records_case(OK_RECORD | {"rationale": None}), needle="rationale",
         check=_not_written("out")),
    Case("prepare: ok record, empty teacher label",
         _records_case(OK_RECORD | {"teacher_label": ""}), needle="teacher_label",
         check=_not_written("out")),
    Case("prepare: teacher file matches no id (teach --backend files)",
         _teacher_files_match_nothing, needle="no output matches any",
         check=_not_written("teach")),
    Case("prepare: one file as train and test", _same_file, needle="both the train and the test",
         check=_not_written("out")),
    Case("prepare: empty records file",
         lambda d: ["prepare", "svamp", "--records", f"train={_jsonl(d / 'e.jsonl', [])}",
                    "--data_dir", str(d / "out")],
         needle="no records", check=_not_written("out")),
    Case("train: misspelt macro", _train_case("--gin.TRAIN_STEP=7"), needle="TRAIN_STEP",
         check=_not_written("run")),
    Case("train: unknown macro", _train_case("--gin.NO_SUCH_MACRO=1"), needle="NO_SUCH_MACRO",
         check=_not_written("run")),
    Case("train: negative learning rate",
         _train_case("--gin.learning_rate_schedule.base_learning_rate=-0.1"),
         needle="base_learning_rate", check=_not_written("run")),
    Case("train: NaN learning rate",
         _train_case("--gin.learning_rate_schedule.base_learning_rate=float('nan')"),
         needle="base_learning_rate", check=_not_written("run")),
    Case("train: TRAIN_SPLIT train[:200%]", _train_case("--gin.TRAIN_SPLIT='train[:200%]'"),
         needle="TRAIN_SPLIT", check=_not_written("run")),
    Case("train: MODEL_DIR is a file", _train_case(model_dir=_file_at), needle="afile",
         check=lambda d: (d / "afile").read_text() == "keep"),
    Case("train: lengths too short",
         _train_case("--gin.TASK_FEATURE_LENGTHS={'inputs': 1, 'targets': 1}"),
         needle="TASK_FEATURE_LENGTHS", check=_not_written("run")),
    Case("train: batch not divisible by the mesh",
         _train_case("--gin.BATCH_SIZE=7"), needle="BATCH_SIZE",
         check=_not_written("run")),
    Case("train: missing initial checkpoint",
         _train_case("--gin.INITIAL_CHECKPOINT_PATH='/no/such/checkpoint'"),
         needle="INITIAL_CHECKPOINT_PATH", check=_not_written("run")),
    Case("export: damaged checkpoint", _damaged_export, needle="is damaged",
         check=_not_written("x")),
    Case("report: accuracy 'high'", _results_wrong_type, needle="field 'accuracy'"),
    Case("quickstart: --steps 0 before writing",
         lambda d: ["quickstart", "--out", str(d / "qs"), "--steps", "0"], needle="--steps",
         check=_not_written("qs")),
    Case("quickstart: --fractions 150 before writing",
         lambda d: ["quickstart", "--out", str(d / "qs"), "--fractions", "150"],
         needle="--fractions", check=_not_written("qs")),
]  # fmt: skip


def _full_disk_cases() -> list[Case]:
    def prepare(d: pathlib.Path) -> list[str]:
        src = _svamp(d, [GOOD] * 200)
        return ["prepare", "svamp", "--source_dir", str(src), "--data_dir", str(d / "full" / "d")]

    def vocab(d: pathlib.Path) -> list[str]:
        data = _prepared(d)
        shutil.copytree(data, d / "full" / "data")
        with open(d / "full" / "fill2", "wb") as f:  # what is left
            with contextlib.suppress(OSError):
                f.write(b"\0" * 4 * 1024 * 1024)
        return ["vocab", "svamp", "--data_dir", str(d / "full" / "data"), "--vocab_size", "400"]

    def train(d: pathlib.Path) -> list[str]:
        return ["train", *TOY, f"--gin.MODEL_DIR={d / 'full' / 'run'}",
                "--gin.TRAIN_STEPS=20", "--gin.train.checkpoint_period=5"]  # fmt: skip

    def no_tmp(d: pathlib.Path) -> bool:  # no empty temporary file left (vocab's spm.model)
        return not [
            p for p in (d / "full").rglob("*") if ".tmp-" in p.name and not p.stat().st_size
        ]

    return [
        Case("prepare: full disk", prepare, needle="no space left", needs_root=True, free_kb=16,
             check=lambda d: not (d / "full" / "d" / "dsbs_svamp").exists()),
        Case("vocab: full disk", vocab, needle="no space left", needs_root=True, check=no_tmp),
        Case("train: full disk at the first save", train, needle="no space left",
             needs_root=True, check=lambda d: not (d / "full" / "run" / "checkpoint_20").exists()),
    ]  # fmt: skip


def run_case(case: Case, d: pathlib.Path) -> tuple[str, str]:
    full = None
    if case.needs_root:
        if os.geteuid() != 0:
            return "skipped", "needs root to mount a small tmpfs"
        full = _tmpfs(d, free_kb=case.free_kb)
        full.__enter__()
    try:
        argv = case.setup(d)
        proc = subprocess.run(
            [sys.executable, "-m", "dsbs_jax.cli", *argv],
            env=_env(), cwd=d, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        held = case.check(d) if case.check else True
    finally:
        if full is not None:
            full.__exit__(None, None, None)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    ours = [line for line in err if line.startswith(f"dsbs {argv[0]}: error: ")]
    if "Traceback" in proc.stderr:
        return "traceback", err[-1][:200] if err else ""
    if proc.returncode != case.rc or not held:
        return "wrong", f"exit {proc.returncode}; {(err or [''])[-1][:200]}"
    if case.rc == 2 and (len(ours) != 1 or case.needle not in ours[0]):
        return "wrong", (err or ["(no error line)"])[-1][:200]
    if case.rc == 2 and len(err) > 1:
        return "chatter", err[0][:200]
    if case.rc == 0 and err:
        return "chatter", err[0][:200]
    return "clean", (ours or [proc.stdout.strip().splitlines()[-1:]])[0][:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated substrings of case names")
    parser.add_argument("--keep", help="keep each case's folder under this folder")
    args = parser.parse_args()
    cases = CASES + _full_disk_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only.split(","))]
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="dsbs-faults-"))
    counts: dict[str, int] = {}
    try:
        for i, case in enumerate(cases):
            d = root / f"case_{i:02d}"
            d.mkdir(parents=True)
            t0 = time.perf_counter()
            outcome, line = run_case(case, d)
            counts[outcome] = counts.get(outcome, 0) + 1
            print(
                f"{outcome:9s} {time.perf_counter() - t0:5.1f} s  {case.name}: {line}", flush=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    ran = len(cases) - counts.get("skipped", 0)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{counts.get('clean', 0)} of {ran} cases clean ({summary})")
    return 0 if counts.get("clean", 0) == ran else 1


if __name__ == "__main__":
    sys.exit(main())
