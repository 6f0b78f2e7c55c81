"""glibc malloc settings for the CPU benchmarks: keep freed memory for reuse (import first).

The same settings `dsbs` applies at start-up (dsbs_jax/host_memory.py, where the measurement is
described): XLA's per-step temporary buffer is reused instead of being mmapped and faulted in
every step. Applied to the whole process, so in `compare_hf.py` both sides (PyTorch and JAX) run
with it. Set `DSBS_BENCH_MALLOC=default` to leave glibc's defaults.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dsbs_jax.host_memory import keep_freed_memory  # noqa: E402

MODE = keep_freed_memory("DSBS_BENCH_MALLOC")
