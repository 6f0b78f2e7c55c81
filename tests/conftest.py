"""Test set-up: 8 fake CPU devices for mesh tests, the released data when it is present."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("DSBS_SHARED_DATA", REPO.parent / "shared" / "data" / "dsbs")
)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The paper's released data (../shared/data/dsbs); skips the test where it is absent."""
    if not (SHARED_DATA / "cqa").is_dir():
        pytest.skip(f"released data not found at {SHARED_DATA} (set DSBS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _restore_data_settings(monkeypatch):
    """CLI calls point seqio and the vocabulary at a data dir for the rest of their process; in
    one pytest process, each test starts from the same settings instead."""
    for name in ("DSBS_DATA_DIR", "DSBS_VOCAB"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    yield
    import seqio

    from dsbs_jax.data import vocab

    seqio.set_tfds_data_dir_override(None)
    vocab.set_vocabulary_override(None)
