"""`dsbs corpus TASK [TASK ...] --data_dir DIR --out DIR [--vocab_size 8000]`: a pretraining
corpus (train inputs, and apart the teacher's train rationales) and a shared vocabulary."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tasks", nargs="+", help="prepared datasets (esnli, cqa, svamp, ...)")
    parser.add_argument(
        "--data_dir",
        help="where `dsbs prepare` wrote them (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)",
    )
    parser.add_argument(
        "--out", required=True, help="folder for inputs.jsonl, rationales.jsonl and spm.model"
    )
    parser.add_argument(
        "--vocab_size",
        type=int,
        default=8000,
        help="pieces of the shared vocabulary (default 8000; 0: no vocabulary)",
    )


def run(args: argparse.Namespace) -> int:
    from dsbs_jax.data.corpus import build_corpus

    print(f"reading the train splits of {', '.join(args.tasks)}", flush=True)
    corpus = build_corpus(args.tasks, args.data_dir, args.out, args.vocab_size or None)
    for name, n in corpus.documents.items():
        size = f", {corpus.tokens[name]:,} tokens" if name in corpus.tokens else ""
        print(f"wrote {args.out}/{name}: {n:,} documents{size}")
    if corpus.vocabulary:
        print(f"wrote {corpus.vocabulary}: the vocabulary (+ 100 sentinel ids)")
    return 0
