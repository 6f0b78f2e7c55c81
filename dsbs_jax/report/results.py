"""The results file of a sweep: one JSON object per finished run, appended as runs finish.

A line holds the run's key (method, fraction, seed), its number of training examples, its
scores (`accuracy`: the direct answer to `predict:`; `rationale_accuracy`: the answer parsed
from the `explain:` output, when scored) and where its time went. A resumed sweep skips every
key already in the file, so a killed sweep loses at most the run it was in.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dsbs_jax.errors import located

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"  # the sweep's settings, train and test sizes, teacher accuracy


@dataclasses.dataclass
class RunResult:
    """One finished run."""

    method: str
    fraction: float
    seed: int
    train_examples: int
    steps: int
    accuracy: float
    rationale_accuracy: float | None = None
    test_examples: int = 0
    seconds: float = 0.0
    timing: dict[str, float] = dataclasses.field(default_factory=dict)
    model_dir: str = ""
    selected_step: int | None = None  # the step scored, when chosen on validation

    @property
    def key(self) -> tuple[str, float, int]:
        return run_key(self.method, self.fraction, self.seed)


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "fraction": _NUMBER,
    "seed": (int,),
    "train_examples": (int,),
    "steps": (int,),
    "accuracy": _NUMBER,
    "rationale_accuracy": _NUMBER,
    "test_examples": (int,),
    "seconds": _NUMBER,
    "timing": (dict,),
    "model_dir": (str,),
    "selected_step": (int,),
}
_NULLABLE = {"rationale_accuracy", "selected_step"}


def run_key(method: str, fraction: float, seed: int) -> tuple[str, float, int]:
    """What identifies a run within a sweep."""
    return (method, float(fraction), int(seed))


def results_path(out_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(out_dir), RESULTS_FILE)


def append_result(out_dir: str | os.PathLike, result: RunResult) -> None:
    """Appends one run's line and flushes it to disk (locked: sweep workers append side by side)."""
    import fcntl

    with open(results_path(out_dir), "a", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.write(json.dumps(dataclasses.asdict(result), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(out_dir: str | os.PathLike) -> list[RunResult]:
    """Every finished run in the file (a later line for the same key replaces an earlier one).

    A torn last line (the process died while writing it) is ignored; any other bad line is a
    located error.
    """
    path = results_path(out_dir)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    fields = {f.name for f in dataclasses.fields(RunResult)}
    by_key: dict[tuple[str, float, int], RunResult] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines) or all(not x.strip() for x in lines[lineno:]):
                continue  # torn final line
            raise located(path, lineno, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise located(path, lineno, "expected a JSON object")
        for name, kinds in _FIELD_TYPES.items():
            value = obj.get(name)
            if name in obj and not (
                (value is None and name in _NULLABLE)
                or (isinstance(value, kinds) and not isinstance(value, bool))
            ):
                what = " or ".join(k.__name__ for k in kinds)
                raise located(path, lineno, f"must be {what}, got {value!r}", field=name)
        try:
            r = RunResult(**{k: v for k, v in obj.items() if k in fields})
        except TypeError as e:
            raise located(path, lineno, f"not a run result ({e})") from None
        r.fraction, r.seed = float(r.fraction), int(r.seed)
        by_key[r.key] = r
    return list(by_key.values())
