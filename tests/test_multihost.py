"""Multi-host training: two processes on localhost (2 CPU devices each, gloo) form one 4-device mesh.

The pair trains, checkpoints collectively, restores collectively and continues; its losses must
equal a single process training on 4 devices over the same global batches.

The data, honestly: each of the two hosts reads its own shard of the task (seqio.ShardInfo(i, 2))
and yields 4 of the 8 rows of a global batch; the mesh puts process 0's devices first on 'data',
so global batch = [host 0's 4 rows; host 1's 4 rows]. The single-process reference cannot read
that by itself (it would read the unsharded stream), so it builds exactly that batch: shard 0's
4 rows and shard 1's 4 rows, concatenated (`_two_shard_dataset`).

Run as a script, this file is one worker of the pair.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dsbs_jax.train import multihost

STEPS = 3  # the pair trains to STEPS with a checkpoint there, then resumes to 2 * STEPS
BATCH = 8
LENGTHS = {"inputs": 16, "targets": 12}


def _config():
    from dsbs_jax.model.t5 import T5Config

    return T5Config(
        vocab_size=384,
        emb_dim=32,
        num_heads=4,
        head_dim=8,
        num_encoder_layers=1,
        num_decoder_layers=1,
        mlp_dim=64,
        dropout_rate=0.0,
    )


def _train(model_dir: str, steps: int, mesh):
    import dsbs_jax.data.toy  # noqa: F401  (registers toy_reverse)
    from dsbs_jax.train import optimizers, trainer

    return trainer.train(
        model_dir=model_dir,
        mixture_or_task_name="toy_reverse",
        task_feature_lengths=LENGTHS,
        train_steps=steps,
        batch_size=BATCH,
        model_config=_config(),
        eval_period=0,
        test_split=None,
        log_every=1,
        checkpoint_period=STEPS,
        checkpoint_every_secs=None,
        mesh=mesh,
        optimizer=optimizers.make_optimizer(
            optimizers.learning_rate_schedule("constant", 1e-3), name="adamw"
        ),
    )


def _losses(model_dir) -> dict[int, float]:
    out = {}
    for line in pathlib.Path(model_dir, "train", "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]
    return out


def _worker(port: int, process_id: int, model_dir: str, out: str) -> None:
    """One host of the pair: join, train to STEPS (checkpoint), then resume from disk to 2*STEPS."""
    import jax

    spec = multihost.initialize(f"127.0.0.1:{port}", 2, process_id)
    from dsbs_jax.train import partitioning

    mesh = partitioning.make_mesh()
    _train(model_dir, STEPS, mesh)
    first = pathlib.Path(model_dir, "train", "metrics.jsonl").read_text() if process_id == 0 else ""
    _train(model_dir, 2 * STEPS, mesh)  # a fresh Checkpointer: restores checkpoint_STEPS
    report = {
        "source": spec.source,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "mesh_shape": dict(mesh.shape),
        "data_axis_processes": [d.process_index for d in mesh.devices[:, 0]],
        "first_run_steps": [json.loads(line)["step"] for line in first.splitlines()],
    }
    pathlib.Path(out).write_text(json.dumps(report))


def _two_shard_dataset(real_build):
    """build_dataset as the pair sees it, in one process: [shard 0's rows; shard 1's rows]."""
    import seqio
    import tensorflow as tf

    def build(name, lengths, batch_size, **kw):
        parts = [
            real_build(name, lengths, batch_size // 2, shard_info=seqio.ShardInfo(i, 2), **kw)
            for i in range(2)
        ]
        ds = tf.data.Dataset.zip(tuple(p[0] for p in parts)).map(
            lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a}
        )
        return ds, parts[0][1], parts[0][2]

    return build


def _gloo_available() -> bool:
    import jax

    try:
        jax.config.jax_cpu_collectives_implementation  # noqa: B018
    except AttributeError:
        return False
    return True


def test_two_processes_match_one_and_resume_from_their_checkpoint(tmp_path, monkeypatch):
    if not _gloo_available():
        pytest.skip("this jaxlib has no gloo CPU collectives (jax_cpu_collectives_implementation)")
    import jax

    from dsbs_jax.train import input_pipeline, partitioning

    port = multihost.free_port()
    pair_dir = tmp_path / "pair"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
        # The resumed run compiles the same step again: take it from the cache.
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(port),
                str(i),
                str(pair_dir),
                str(tmp_path / f"{i}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{logs[i][-3000:]}"
    reports = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(reports):
        assert r["source"] == "flags"
        assert (r["process_index"], r["process_count"], r["local_devices"]) == (i, 2, 2)
        assert r["mesh_shape"] == {"data": 4, "model": 1}
        assert r["data_axis_processes"] == [0, 0, 1, 1]
    # Only process 0 wrote metrics: each step once.
    assert reports[0]["first_run_steps"] == list(range(1, STEPS + 1))
    assert (pair_dir / "config.gin").exists()
    assert (pair_dir / f"checkpoint_{STEPS}").is_dir()
    assert (pair_dir / f"checkpoint_{2 * STEPS}").is_dir()

    # The reference: one process, 4 devices, the same global batches, uninterrupted.
    monkeypatch.setattr(
        input_pipeline, "build_dataset", _two_shard_dataset(input_pipeline.build_dataset)
    )
    one_dir = tmp_path / "one"
    _train(str(one_dir), 2 * STEPS, partitioning.make_mesh(devices=jax.devices()[:4]))
    one, pair = _losses(one_dir), _losses(pair_dir)
    assert sorted(one) == sorted(pair) == list(range(1, 2 * STEPS + 1))
    print("losses (step: pair / one process):")
    for s in sorted(one):
        print(f"  {s}: {pair[s]:.6f} / {one[s]:.6f}")
    np.testing.assert_allclose(
        [pair[s] for s in sorted(pair)], [one[s] for s in sorted(one)], rtol=1e-4
    )
    assert one[2 * STEPS] < one[1]


def test_cluster_resolution_order():
    """Flags beat DSBS_* variables, which beat SLURM's; nothing at all leaves it to JAX."""
    from dsbs_jax.errors import UserError

    slurm = {"SLURM_JOB_NODELIST": "gpu[003-005,9]", "SLURM_NTASKS": "4", "SLURM_PROCID": "2"}
    dsbs = {"DSBS_COORDINATOR": "10.0.0.1:999", "DSBS_NUM_PROCESSES": "2", "DSBS_PROCESS_ID": "1"}
    spec = multihost.resolve("h:1", 3, 0, env={**slurm, **dsbs})
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "flags",
        "h:1",
        3,
        0,
    )
    spec = multihost.resolve(env={**slurm, **dsbs, "DSBS_LOCAL_DEVICE_IDS": "3"})
    assert (spec.source, spec.coordinator_address, spec.process_id) == ("env", "10.0.0.1:999", 1)
    assert spec.local_device_ids == (3,)
    spec = multihost.resolve(env=slurm)
    assert spec.source == "slurm"
    assert spec.coordinator_address == f"gpu003:{multihost.DEFAULT_PORT}"
    assert (spec.num_processes, spec.process_id) == (4, 2)
    assert multihost.resolve(env={}).source == "auto"
    assert multihost.first_slurm_host("node7") == "node7"
    with pytest.raises(UserError, match="process_id"):
        multihost.resolve("h:1", 2, None, env={})
    with pytest.raises(UserError, match="not in"):
        multihost.resolve("h:1", 2, 2, env={})
    with pytest.raises(UserError, match="DSBS_NUM_PROCESSES"):
        multihost.resolve(env={"DSBS_COORDINATOR": "h", "DSBS_NUM_PROCESSES": "x"})


def test_dsbs_train_has_the_multihost_flags():
    r = subprocess.run(
        [sys.executable, "-m", "dsbs_jax.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for flag in ("--multihost", "--coordinator_address", "--num_processes", "--process_id"):
        assert flag in r.stdout


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
