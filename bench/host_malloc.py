"""glibc malloc settings for the CPU benchmarks: keep freed memory for reuse (import first).

XLA's CPU runtime allocates each step's temporary buffer (84 MB for the tiny train step at
4 x 208/72) with posix_memalign on one of its worker threads. In a thread arena glibc serves a
block that large with a fresh mmap and unmaps it on free, so every step faults in all of its pages
again (21,600 minor faults, ~55 ms of kernel CPU time per tiny step measured). With one arena, no
mmap for large blocks and no trimming, the block is reused and the faults are gone.

Applied to the whole process, so in `compare_hf.py` both sides (PyTorch and JAX) run with it.
It must run before any thread has allocated (before numpy, jax or torch are imported). Set
`DSBS_BENCH_MALLOC=default` to leave glibc's defaults. The same settings for any process:
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> str:
    """Applies the settings (glibc only); returns 'keep' when applied, else 'default'."""
    if os.environ.get("DSBS_BENCH_MALLOC", "keep") == "default":
        return "default"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default"
    ok = all(
        libc.mallopt(opt, value)
        for opt, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    )
    return "keep" if ok else "default"


MODE = keep_freed_memory()
