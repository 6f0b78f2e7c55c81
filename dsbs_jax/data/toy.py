"""`toy_reverse` and `toy_copy`: tiny sequence tasks that need no data on disk.

Random lowercase strings (length 3 to 8), byte vocabulary. A test of the trainer that a
from-scratch student must really learn (exact match on validation), in a minute of CPU.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
SPLIT_SIZES = {"train": 20_000, "validation": 256, "test": 256}


def _strings(split: str, n: int) -> list[str]:
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    letters = np.array(list("abcdefghij"))
    return ["".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(n)]


def _dataset(
    split: str, shuffle_files: bool = False, seed: int | None = None, kind: str = "reverse"
):
    del shuffle_files, seed
    words = _strings(split, SPLIT_SIZES[split])
    targets = [w[::-1] if kind == "reverse" else w for w in words]
    return tf.data.Dataset.from_tensor_slices(
        {
            "inputs": [f"{kind}: {w}" for w in words],
            "targets": targets,
            "id": [f"{split}-{i}" for i in range(len(words))],
        }
    )


def _exact_match(targets, predictions):
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def register() -> None:
    """Registers `toy_reverse` and `toy_copy` (idempotent)."""
    vocab = seqio.ByteVocabulary()
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    for kind in ("reverse", "copy"):
        name = f"toy_{kind}"
        if name in seqio.TaskRegistry.names():
            continue
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                functools.partial(_dataset, kind=kind),
                splits=tuple(SPLIT_SEEDS),
                num_input_examples=SPLIT_SIZES,
            ),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=features,
            metric_fns=[_exact_match],
        )


register()
