"""Test set-up: 8 fake CPU devices for mesh tests, the released data when it is present."""

import logging
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
    """Each test starts from the same data environment and no seqio data-dir override."""
    for name in ("DSBS_DATA_DIR", "DSBS_VOCAB"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    yield
    import seqio

    seqio.set_tfds_data_dir_override(None)


class _Compiles(logging.Handler):
    """Collects the names of the functions jax compiles while installed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg.split()[1])


@pytest.fixture
def compiles():
    """The names of the functions jax compiles during the test."""
    import jax

    handler = _Compiles()
    root = logging.getLogger("jax")
    root.addHandler(handler)
    with jax.log_compiles(True):
        yield handler
    root.removeHandler(handler)
