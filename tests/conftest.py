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
