"""Test set-up: 8 fake CPU devices for mesh tests, the released data when it is present."""

import logging
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache for the session, shared by the commands the tests run as
# processes of their own: the same tiny programs are compiled once, not once per process (with
# 8 fake devices a cold `dsbs train` of the toy spends ~20 s of its ~50 s compiling). The folder
# goes at the end of the session (`pytest_unconfigure`).
_COMPILE_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _COMPILE_CACHE = tempfile.mkdtemp(prefix="dsbs-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("DSBS_SHARED_DATA", REPO.parent / "shared" / "data" / "dsbs")
)


@pytest.fixture(autouse=True, scope="module")
def _gin_config_ends_with_its_file():
    """A test file's gin bindings end with it: `make test` runs several files in one process, and
    a T5Config built later (a gin-configurable class) would otherwise take their values."""
    yield
    import gin

    gin.clear_config()


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


def pytest_unconfigure(config):
    """Removes the session's compilation cache."""
    if _COMPILE_CACHE is not None:
        shutil.rmtree(_COMPILE_CACHE, ignore_errors=True)
