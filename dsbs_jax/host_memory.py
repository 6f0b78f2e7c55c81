"""glibc malloc settings for training on CPU hosts: keep freed memory for reuse.

XLA's CPU runtime allocates each step's temporary buffer with posix_memalign on one of its
worker threads. In a thread arena glibc serves a large block with a fresh mmap and unmaps it on
free, so every step faults all of its pages in again (measured for the tiny benchmark step:
~21,600 minor faults, ~55 ms of kernel time per step; on the quickstart's sweep runs system time
fell from ~9 s to ~2 s per run, docs/performance.md). One arena, no mmap for large blocks and no
trimming keep the block for reuse. "No trimming" is a threshold of -1: the largest positive one,
2**31 - 1, still gave back the heap's top whenever the buffers of the steps in flight, freed
together, passed 2 GiB (three ~730 MB buffers at the small benchmark's size: ~180,000 faults and
0.4-0.9 s of kernel time in a 1.8-2.7 s step). The cost: host memory freed during a run is not
returned to the system until the process ends.

`dsbs` applies this at start-up (`cli.main`); set `DSBS_MALLOC=default` to keep glibc's defaults.
The same settings for any process: `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=-1`. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "DSBS_MALLOC"


def keep_freed_memory(env: str = ENV) -> str:
    """Applies the settings unless `$env` is 'default'; returns 'keep' when applied, else
    'default' (opted out, or not glibc). Call before threads allocate (before jax is imported)."""
    if os.environ.get(env, "keep") == "default":
        return "default"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default"
    ok = all(
        mallopt(opt, value)
        for opt, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    )
    return "keep" if ok else "default"
