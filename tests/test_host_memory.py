"""`dsbs` keeps freed host memory for reuse (glibc): a large block freed and allocated again is
not faulted in again, and DSBS_MALLOC=default opts out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import resource, sys
from dsbs_jax.host_memory import keep_freed_memory
mode = keep_freed_memory()
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():  # what XLA does with a step's temporary buffer: allocate, write, free
    p = libc.malloc(128 << 20)
    ctypes.memset(p, 1, 128 << 20)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(mode, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_and_default_opts_out():
    mode, faults = _probe()
    assert mode == "keep"
    default_mode, default_faults = _probe(DSBS_MALLOC="default")
    assert default_mode == "default"
    # glibc's default: an mmap per 128 MB block, faulted in every time (4 KiB pages: ~163,840;
    # fewer where transparent huge pages back it); kept: the same block again, no new faults.
    assert default_faults >= 5 * 64  # at least one fault per 2 MiB of each block
    assert faults * 20 < default_faults
