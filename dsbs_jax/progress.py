"""Progress lines for long work that is not training steps (decoding an eval split, predicting a
file): `decoding test: 640/2000 examples, 21.3/s, eta 64 s`.

Quiet work stays quiet: the first line comes once `every` seconds have passed, then one line
every `every` seconds, and a closing line only if an earlier one was printed. Where standard
output is a terminal, `say` may be anything that prints; the lines are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0


class Progress:
    """Called as `progress(done, total)` after each piece of work; says a line when due."""

    def __init__(
        self,
        what: str,
        say: Callable[[str], None] | None,
        every: float = DEFAULT_EVERY_S,
        unit: str = "examples",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.say, self.every, self.unit, self.clock = what, say, every, unit, clock
        self.start = clock()
        self.last = self.start
        self.said = False

    def __call__(self, done: int, total: int) -> None:
        if self.say is None:
            return
        now = self.clock()
        finished = done >= total
        if finished and not self.said:
            return
        if not finished and now - self.last < self.every:
            return
        self.last, self.said = now, True
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if finished:
            self.say(f"{self.what}: {done}/{total} {self.unit} in {elapsed:.0f} s ({rate:.1f}/s)")
            return
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.say(f"{self.what}: {done}/{total} {self.unit}, {rate:.1f}/s, eta {eta:.0f} s")
