"""Progress lines of long decoding: when they come, what they say, and silence for short work."""

from __future__ import annotations

import numpy as np

from dsbs_jax.progress import Progress
from dsbs_jax.train import evaluation


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_ten_seconds_with_rate_and_eta_then_a_closing_line():
    clock, lines = Clock(), []
    progress = Progress("decoding test", lines.append, clock=clock)
    for t, done in [(4, 100), (9, 200), (10, 250), (15, 400), (21, 500), (24, 600)]:
        clock.now = t
        progress(done, 600)
    assert lines == [
        "decoding test: 250/600 examples, 25.0/s, eta 14 s",
        "decoding test: 500/600 examples, 23.8/s, eta 4 s",
        "decoding test: 600/600 examples in 24 s (25.0/s)",
    ]


def test_short_work_says_nothing():
    clock, lines = Clock(), []
    progress = Progress("decoding test", lines.append, clock=clock)
    for t, done in [(2, 64), (4, 128), (6, 200)]:
        clock.now = t
        progress(done, 200)
    assert lines == []
    Progress("x", None, every=0)(1, 2)  # no one to tell: nothing happens


def test_decode_batches_reports_each_batch_of_rows():
    lines = []
    rows = np.arange(10 * 5, dtype=np.int32).reshape(10, 5)
    out = evaluation.decode_batches(
        lambda params, chunk: chunk[:, :3] + params,
        1,
        rows,
        batch_size=4,
        progress=Progress("predicting", lines.append, every=0, unit="inputs"),
    )
    assert out == (rows[:, :3] + 1).tolist()
    assert [x.split(",")[0] for x in lines[:-1]] == [
        "predicting: 4/10 inputs",
        "predicting: 8/10 inputs",
    ]
    assert lines[-1].startswith("predicting: 10/10 inputs in ")
