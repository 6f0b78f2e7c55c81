"""The launchers' --dry_run output, parsed as the shell would, and the mesh gin files."""

from __future__ import annotations

import os
import pathlib
import posixpath
import re
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


def _launch(script: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "launch" / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "T5X_SRC"},  # its default, ../t5x
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
    assert any("install_t5x.sh" in w for w in ssh[0][ssh[0].index("--command") + 1].split())
    train = _remote(ssh[1])[-1]
    assert train[:4] == [
        "python3",
        "-m",
        "t5x.train",
        "--gin_search_paths=dsbs_jax/gin_configs,../t5x",
    ]
    assert train.index("--gin_file=meshes/tpu_v5p_128.gin") < train.index(
        "--gin_file=meshes/fsdp.gin"
    )
    assert "--gin.partitioning.PjitPartitioner.num_partitions=%NUM_PARTITIONS" in train


def _with_cwd(commands: list[list[str]], start: str) -> list[tuple[str, list[str]]]:
    """(folder it runs in, argv) for each command of a remote script, following its `cd`s."""
    out, cwd = [], start
    for argv in commands:
        if argv[0] == "cd":
            cwd = posixpath.normpath(posixpath.join(cwd, argv[1]))
        out.append((cwd, argv))
    return out


def _gin_files_read(gin_files: list[str]) -> list[str]:
    """Every file of ours that gin reads for these --gin_file arguments, includes followed."""
    from dsbs_jax.train import gin_utils

    out = []
    for name in gin_files:
        out.append(name)
        path = gin_utils.PACKAGE_GIN_DIR / name
        if path.is_file():
            out += _gin_files_read(re.findall(r"^include '([^']+)'", path.read_text(), re.M))
    return out


def test_tpu_t5x_route_installs_no_deps_pinned_and_searches_where_it_cloned(tmp_path):
    """The one T5X route: the launcher runs launch/install_t5x.sh on every worker (git
    checkouts, --no-deps, the rest under constraints.txt), and T5X's train searches our gin
    folder and the folder that script cloned T5X into."""
    r = _launch(
        "tpu_vm.sh",
        *("--name", "t5x", "--zone", "us-east5-a", "--accelerator", "v5p-128", "--trainer"),
        *("t5x", "--dry_run", "--", "--gin_file=t5x/dsbs_t5_1_1_base.gin"),
    )
    assert r.returncode == 0, r.stderr
    ssh = [c for c in _commands(r.stdout) if c[3:5] == ["tpu-vm", "ssh"]]
    home = "/home/worker"  # where gcloud's ssh starts; the names below are relative to it
    install = _with_cwd(_remote(ssh[0]), home)
    script = [(cwd, c) for cwd, c in install if c[0].endswith("install_t5x.sh")]
    assert len(script) == 1, install
    cwd, argv = script[0]
    assert cwd == f"{home}/dsbs-jax" and argv[0] == "launch/install_t5x.sh"
    assert not any("t5x" in w for _, c in install if c[1:2] == ["install"] for w in c)
    src = argv[argv.index("--src") + 1]
    venv_pip = posixpath.normpath(posixpath.join(cwd, argv[argv.index("--pip") + 1]))
    assert venv_pip == f"{home}/dsbs-venv/bin/pip"  # the venv the trainer runs in

    # What that script does there, from its own --dry_run.
    (tmp_path / "dsbs-jax").mkdir()
    done = _launch("install_t5x.sh", *argv[1:], "--dry_run", cwd=tmp_path / "dsbs-jax")
    assert done.returncode == 0, done.stderr
    steps = _commands(done.stdout)
    clones = {c[2]: c[3] for c in steps if c[:2] == ["git", "clone"]}
    assert clones["https://github.com/google-research/t5x"] == src
    pips = [c for c in steps if c[1:2] == ["install"]]
    assert len(pips) == 2 and all(c[0] == argv[argv.index("--pip") + 1] for c in pips)
    for pip in pips:
        assert pip[pip.index("-c") + 1] == str(REPO / "constraints.txt")
    assert "--no-deps" in pips[0] and pips[0][pips[0].index("-e") + 1] == src
    assert set(clones.values()) == {pips[0][i + 1] for i, w in enumerate(pips[0]) if w == "-e"}
    assert not any(w.startswith("git+") for c in steps for w in c)

    train_cwd, train = _with_cwd(_remote(ssh[1]), home)[-1]
    assert train[:3] == ["python3", "-m", "t5x.train"]
    paths = next(w for w in train if w.startswith("--gin_search_paths=")).split("=", 1)[1]
    found = [posixpath.normpath(posixpath.join(train_cwd, p)) for p in paths.split(",")]
    assert found == [
        f"{home}/dsbs-jax/dsbs_jax/gin_configs",  # ours (t5x/*.gin) first
        posixpath.normpath(posixpath.join(cwd, src)),  # T5X's own, where it was cloned
    ]


def test_docs_and_gin_headers_tell_the_launchers_t5x_route(tmp_path):
    """docs/pretrained.md and the gin_configs/t5x/ headers: the launchers' search paths, and T5X
    installed by launch/install_t5x.sh, whose commands the doc shows as they are."""
    r = _launch("gpu_slurm.sh", "--nodes", "1", "--trainer", "t5x", "--dry_run", "--", "a")
    assert r.returncode == 0, r.stderr
    ours = re.search(r"--gin_search_paths=\S+", r.stdout).group(0)
    texts = {"docs/pretrained.md": (REPO / "docs" / "pretrained.md").read_text()}
    for path in sorted((REPO / "dsbs_jax" / "gin_configs" / "t5x").glob("*.gin")):
        texts[str(path.relative_to(REPO))] = path.read_text()
    assert len(texts) == 7  # the doc and the six gin files
    for name, text in texts.items():
        found = re.findall(r"--gin_search_paths=[^\s\\]+", text)
        assert bool(found) == ("-m t5x.train" in text), name  # every T5X command names them
        assert all(f == ours for f in found), f"{name}: {found}, the launchers: {ours}"
    docs = texts["docs/pretrained.md"]
    assert "launch/install_t5x.sh" in docs and "git clone" not in docs
    (tmp_path / "repo").mkdir()
    done = _launch("install_t5x.sh", "--dry_run", cwd=tmp_path / "repo")
    assert done.returncode == 0, done.stderr
    pips = [
        line[2:].replace(str(REPO / "constraints.txt"), "constraints.txt")
        for line in done.stdout.splitlines()
        if line.startswith("+ pip ")
    ]
    shown = [line for line in docs.splitlines() if line.startswith("pip install")]
    assert pips == shown and len(pips) == 2


@pytest.mark.parametrize("trainer", ["dsbs", "t5x"])
def test_v5p_128_mesh_gin_is_read_once(trainer):
    """meshes/tpu_v5p_128_xxl.gin includes the v5p-128 mesh: the launcher does not add it again;
    with a gin file that does not, it adds it once, first."""
    where = ("--name", "p", "--zone", "us-east5-a", "--accelerator", "v5p-128")
    mesh = "meshes/tpu_v5p_128.gin"
    for given, expect_added in (
        (["meshes/tpu_v5p_128_xxl.gin", "runs/dsbs.gin"], False),
        (["models/t5_1_1_xxl.gin", "runs/dsbs.gin", "meshes/fsdp.gin"], True),
    ):
        args = [f"--gin_file={g}" for g in given]
        r = _launch("tpu_vm.sh", *where, "--trainer", trainer, "--dry_run", "--", *args)
        assert r.returncode == 0, r.stderr
        ssh = [c for c in _commands(r.stdout) if c[3:5] == ["tpu-vm", "ssh"]]
        train = _remote(ssh[1])[-1]
        gin_files = [w.split("=", 1)[1] for w in train if w.startswith("--gin_file=")]
        assert gin_files == ([mesh] if expect_added else []) + given
        assert _gin_files_read(gin_files).count(mesh) == 1
        assert (f"includes {mesh}" in r.stderr) != expect_added


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
    assert train[:4] == [
        "python3",
        "-m",
        "t5x.train",
        "--gin_search_paths=dsbs_jax/gin_configs,../t5x",  # from the repository, as on TPUs
    ]
    assert f"cd {REPO}" in r.stdout.splitlines()
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
