"""`dsbs` keeps freed host memory for reuse (glibc): large blocks freed and allocated again are
not faulted in again, also when together they exceed 2 GiB, and DSBS_MALLOC=default opts out."""

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
blocks, mib = int(sys.argv[1]), int(sys.argv[2])
def touch():  # what XLA does with the temporary buffers of the steps in flight
    ps = [libc.malloc(mib << 20) for _ in range(blocks)]
    for p in ps:
        ctypes.memset(p, 1, mib << 20)
    for p in ps:
        libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[3])):
    touch()
print(mode, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(blocks: int, mib: int, rounds: int, **env) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(blocks), str(mib), str(rounds)],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_and_default_opts_out():
    mode, faults = _probe(1, 128, 5)
    assert mode == "keep"
    default_mode, default_faults = _probe(1, 128, 5, DSBS_MALLOC="default")
    assert default_mode == "default"
    # glibc's default: an mmap per 128 MB block, faulted in every time (4 KiB pages: ~163,840;
    # fewer where transparent huge pages back it); kept: the same block again, no new faults.
    assert default_faults >= 5 * 64  # at least one fault per 2 MiB of each block
    assert faults * 20 < default_faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_over_2_gib_is_kept():
    # Three steps in flight at the small benchmark's size each hold a ~730 MB temporary buffer.
    # Freed together they leave a 2.2 GiB top of the heap, which a trim threshold of 2**31 - 1
    # (mallopt's largest positive value) gave back to the system, to be faulted in again.
    mode, faults = _probe(3, 768, 2)
    assert mode == "keep"
    assert faults < 3 * 768 * 256 // 20  # under 5% of the blocks' 4 KiB pages
