"""What the student reads and writes: the task prefixes, T5's special ids, text <-> token rows.

Every path from text to the network (training through seqio, evaluation, `dsbs predict`, a
sweep's test scoring) uses these prefixes and these two functions for decoding inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def encode_inputs(vocab, texts: Sequence[str], length: int) -> tuple[np.ndarray, int]:
    """Token rows [n, length] (each text + EOS, zero-padded) and how many texts were cut to fit."""
    rows = np.zeros((len(texts), length), np.int32)
    cut = 0
    for i, text in enumerate(texts):
        ids = list(vocab.encode(text))
        if len(ids) > length - 1:
            ids, cut = ids[: length - 1], cut + 1
        ids.append(EOS_ID)
        rows[i, : len(ids)] = ids
    return rows, cut


def decode_rows(vocab, rows: Sequence[Sequence[int]]) -> list[str]:
    """Text of each decoded row, up to its first EOS (padding and EOS dropped)."""
    texts = []
    for row in rows:
        row = list(row)
        if EOS_ID in row:
            row = row[: row.index(EOS_ID)]
        texts.append(vocab.decode([int(t) for t in row if t > EOS_ID]))
    return texts
