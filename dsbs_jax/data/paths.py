"""Where prepared data lives: one rule, used by `dsbs prepare`, the SeqIO tasks and the vocabulary.

The data directory is, in order: seqio's override (`seqio.set_tfds_data_dir_override`, which is
what T5X's `--tfds_data_dir` sets), an explicit directory (a `--data_dir` flag, or the one given
to `register_card_tasks`), the environment variable `DSBS_DATA_DIR`, then `TFDS_DATA_DIR` (what
T5X and TFDS users set), and last TFDS's own default (`~/tensorflow_datasets`). It is resolved
at each use, never at import.
"""

from __future__ import annotations

import os

import seqio

DATA_DIR_ENV = "DSBS_DATA_DIR"
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
VERSION = "1.0.0"


def tfds_dataset_name(dataset: str) -> str:
    """The TFDS name of a prepared dataset: `dsbs_<dataset>`."""
    return f"dsbs_{dataset}"


def seqio_data_dir_override() -> str | None:
    """The data dir set through `seqio.set_tfds_data_dir_override`, if any."""
    return seqio.utils._get_data_dir_override(tfds_name=None) or None


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> str:
    """The data directory: seqio override, else `explicit`, else $DSBS_DATA_DIR, else
    $TFDS_DATA_DIR, else TFDS's default."""
    found = seqio_data_dir_override() or explicit or env_data_dir()
    if found:
        return os.fspath(found)
    return os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def env_data_dir() -> str | None:
    """$DSBS_DATA_DIR, else $TFDS_DATA_DIR, else None."""
    return os.environ.get(DATA_DIR_ENV) or os.environ.get(TFDS_DATA_DIR_ENV) or None


def dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> str:
    """`<data_dir>/dsbs_<dataset>`: holds the TFDS version folder and the default vocabulary."""
    return os.path.join(resolve_data_dir(data_dir), tfds_dataset_name(dataset))
