"""`dsbs vocab TASK --data_dir DIR [--vocab_size 8000] [--out PATH]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="a prepared dataset (cqa, svamp, esnli, anli, ...)")
    parser.add_argument(
        "--data_dir",
        help="where `dsbs prepare` wrote it (default: $DSBS_DATA_DIR, else $TFDS_DATA_DIR)",
    )
    parser.add_argument("--vocab_size", type=int, default=8000, help="pieces (default 8000)")
    parser.add_argument(
        "--model_type",
        choices=("unigram", "bpe"),
        default="unigram",
        help="sentencepiece model type (bpe keeps whole words on a small corpus)",
    )
    parser.add_argument(
        "--out", help="model file (default: <data_dir>/dsbs_<task>/spm.model, where tasks look)"
    )


def run(args: argparse.Namespace) -> int:
    import sentencepiece as spm

    from dsbs_jax.data.vocab import EXTRA_IDS, train_vocab

    path = train_vocab(
        args.task,
        args.data_dir,
        args.vocab_size,
        args.out,
        model_type=args.model_type,
        say=lambda line: print(line, flush=True),
    )
    sp = spm.SentencePieceProcessor(model_file=path)
    print(
        f"wrote {path}: {sp.get_piece_size()} pieces + {EXTRA_IDS} sentinel ids "
        f"(pad {sp.pad_id()}, eos {sp.eos_id()}, unk {sp.unk_id()}, bos {sp.bos_id()})"
    )
    return 0
