"""The launchers' --dry_run output, parsed as the shell would, and the mesh gin files."""

from __future__ import annotations

import pathlib
import shlex
import subprocess

import gin
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FEATURES = "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 256}"
TRAINER_ARGS = [
    "--gin_file=models/t5_1_1_base.gin",
    "--gin_file=runs/dsbs.gin",
    "--gin.MODEL_DIR=gs://my-bucket/runs/svamp_dsbs",
    "--gin.MIXTURE_OR_TASK_NAME=svamp_dsbs",
    FEATURES,
    "--gin.TRAIN_STEPS=10000",
    "--tfds_data_dir=gs://my-bucket/data",
]


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "launch" / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _commands(stdout: str) -> list[list[str]]:
    """The printed commands ('+ ...' lines) as argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(argv: list[str]) -> list[str]:
    """The --command of a `gcloud ... ssh` as argv lists, one per `&&`-joined command."""
    script = argv[argv.index("--command") + 1]
    lexer = shlex.shlex(script, posix=True, punctuation_chars="&;|()")
    lexer.whitespace_split = True
    out, cur = [], []
    for tok in lexer:
        if tok in ("&&", ";", "||", "(", ")", "|"):
            out.append(cur) if cur else None
            cur = []
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


def test_v5e_16_dry_run_creates_installs_trains_on_all_workers_and_tears_down():
    r = _launch(
        "tpu_vm.sh",
        "--name",
        "dsbs-v5e16",
        "--zone",
        "us-west4-a",
        "--accelerator",
        "v5litepod-16",
        "--dry_run",
        "--",
        *TRAINER_ARGS,
    )
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    create, delete = gcloud[0], gcloud[1]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert create[5] == "dsbs-v5e16"
    assert "--accelerator-type" in create and "v5litepod-16" in create
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "dsbs-v5e16"]
    ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    scp = [c for c in gcloud if c[3:5] == ["tpu-vm", "scp"]]
    assert scp and "--worker=all" in scp[0]
    install = _remote(ssh[0])
    pin = ["-c", "./dsbs-jax/constraints.txt"]  # the versions the suite passed with
    assert ["dsbs-venv/bin/pip", "install", "-q", *pin, "jax[tpu]"] in install
    assert ["dsbs-venv/bin/pip", "install", "-q", *pin, "./dsbs-jax"] in install
    train = _remote(ssh[1])[-1]
    assert train[:5] == [
        "dsbs",
        "train",
        "--multihost",
        "--gin_file=meshes/tpu_v5e_16.gin",
        "--gin_file=models/t5_1_1_base.gin",
    ]
    assert train[3:] == ["--gin_file=meshes/tpu_v5e_16.gin", *TRAINER_ARGS]  # args intact
    order = [cmds.index(c) for c in (create, scp[0], ssh[0], ssh[1])]
    assert order == sorted(order)


def test_tpu_queued_resource_and_t5x_trainer():
    r = _launch(
        "tpu_vm.sh",
        *("--name", "big", "--zone", "us-east5-a", "--accelerator", "v5p-128"),
        *("--queued", "--trainer", "t5x", "--dry_run", "--"),
        "--gin_file=t5x/dsbs.gin",
        "--gin_file=meshes/fsdp.gin",
    )
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert cmds[0][3:6] == ["queued-resources", "create", "big"]
    assert "--runtime-version" in cmds[0] and "v2-alpha-tpuv5" in cmds[0]
    assert any(c[3:5] == ["queued-resources", "delete"] and "--force" in c for c in cmds)
    assert any(c[3:5] == ["queued-resources", "describe"] for c in cmds)
    ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
    assert any("t5x" in w for w in ssh[0][ssh[0].index("--command") + 1].split())
    train = _remote(ssh[1])[-1]
    assert train[:4] == [
        "python3",
        "-m",
        "t5x.train",
        "--gin_search_paths=dsbs_jax/gin_configs",
    ]
    assert train.index("--gin_file=meshes/tpu_v5p_128.gin") < train.index(
        "--gin_file=meshes/fsdp.gin"
    )
    assert "--gin.partitioning.PjitPartitioner.num_partitions=%NUM_PARTITIONS" in train


def test_slurm_dry_run_one_process_per_gpu():
    r = _launch(
        "gpu_slurm.sh",
        *("--nodes", "2", "--per", "gpu", "--partition", "a100", "--dry_run", "--"),
        *TRAINER_ARGS,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=8" in lines
    assert "#SBATCH --gpus-per-node=8" in lines
    assert "#SBATCH --partition=a100" in lines
    assert any(line.startswith("export DSBS_COORDINATOR=") for line in lines)
    srun = shlex.split(next(line for line in lines if line.startswith("srun ")))
    assert srun[-3:-1] == ["bash", "-c"]
    env, train = srun[-1].split("; exec ", 1)
    assert "DSBS_LOCAL_DEVICE_IDS=$SLURM_LOCALID" in env
    assert shlex.split(train) == [
        "dsbs",
        "train",
        "--multihost",
        "--gin_file=meshes/gpu_8.gin",
        *TRAINER_ARGS,
    ]
    assert [c[0] for c in _commands(r.stdout)] == ["mkdir", "sbatch", "tail"]


def test_slurm_t5x_gets_its_multiprocess_flags():
    r = _launch(
        "gpu_slurm.sh",
        "--nodes",
        "4",
        "--trainer",
        "t5x",
        "--dry_run",
        "--",
        "--gin_file=t5x/dsbs.gin",
    )
    assert r.returncode == 0, r.stderr
    srun = next(line for line in r.stdout.splitlines() if line.startswith("srun "))
    train = shlex.split(shlex.split(srun)[-1].split("; exec ", 1)[1])
    assert train[:3] == ["python3", "-m", "t5x.train"]
    assert "--multiprocess_gpu" in train
    assert "--coordinator_address=$DSBS_COORDINATOR" in train
    assert "#SBATCH --ntasks-per-node=1" in r.stdout


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu_slurm.sh"])
def test_help_and_bad_input(script):
    r = _launch(script, "--help")
    assert r.returncode == 0 and r.stdout.startswith("Usage:")
    r = _launch(script, "--bogus")
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
    assert "Traceback" not in r.stderr
    r = _launch(script, "--dry_run")
    assert r.returncode == 2 and "is required" in r.stderr


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu_slurm.sh"])
@pytest.mark.parametrize("first", [("dsbs", "train"), ("train",)])
def test_user_args_that_repeat_dsbs_train_are_refused(script, first):
    where = ("--name", "x", "--zone", "z", "--accelerator", "v5litepod-16")
    flags = where if script == "tpu_vm.sh" else ("--nodes", "1", "--partition", "p")
    r = _launch(script, *flags, "--dry_run", "--", *first, *TRAINER_ARGS)
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"start with '{first[0]}'" in lines[0], r.stderr
    assert "gcloud" not in r.stdout and "sbatch" not in r.stdout


def test_tpu_unknown_accelerator_needs_a_mesh():
    r = _launch(
        "tpu_vm.sh", "--name", "x", "--zone", "z", "--accelerator", "v6e-64", "--dry_run", "--", "a"
    )
    assert r.returncode == 2 and "pass --mesh" in r.stderr


MESHES = {
    "cpu.gin": {"data": 8, "model": 1},
    "gpu_1.gin": {"data": 8, "model": 1},
    "gpu_8.gin": {"data": 8, "model": 1},
    "tpu_v4_8.gin": {"data": 8, "model": 1},
    "tpu_v5e_16.gin": {"data": 8, "model": 1},
    "tpu_v5e_256.gin": {"data": 2, "model": 4},
    "tpu_v5p_128.gin": {"data": 2, "model": 4},
}


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_gin_files_set_t5x_knobs(name, clean_gin):
    """Each mesh file parses alone and gives its (data, model) split, here on 8 CPU devices."""
    from dsbs_jax.train import gin_utils, partitioning

    text = (gin_utils.PACKAGE_GIN_DIR / "meshes" / name).read_text()
    assert text.startswith("# ") and ("dsbs train" in text or "launch/" in text)
    gin_utils.parse_gin([f"meshes/{name}"], [])
    assert dict(partitioning.make_mesh().shape) == MESHES[name]
    assert partitioning.logical_axis_rules() == partitioning.STANDARD_RULES


def test_fsdp_gin_after_a_mesh_and_num_partitions_override(clean_gin):
    from dsbs_jax.train import gin_utils, partitioning

    gin_utils.parse_gin(["meshes/gpu_8.gin", "meshes/fsdp.gin"], ["NUM_PARTITIONS = 2"])
    assert dict(partitioning.make_mesh().shape) == {"data": 4, "model": 2}
    assert partitioning.logical_axis_rules() == partitioning.FSDP_RULES
