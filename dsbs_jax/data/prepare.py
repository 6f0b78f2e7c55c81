"""Writes the records of one dataset as a TFDS dataset on disk: `dsbs_<task>` 1.0.0.

Splits are `train`, `validation` and `test`. Where the released data has no validation split
(cqa, svamp), validation is a seeded 10% of train (`card.validation_fraction`, seed 0, a numpy
permutation). Where the released train file is absent (e-SNLI here: its training inputs are not
shipped), `train` is built from the released `valid` split, and validation is carved from it the
same way; a line says so. TFDS stores each split in an order fixed by a hash of the example keys,
so `train[:25%]` is a pseudo-random quarter of train, the same one on every run and machine.

Every record is kept, parsed or not, with its `status`; the SeqIO tasks filter them, so counts
stay visible. The dataset reads back with plain `tfds.builder("dsbs_<task>", data_dir=OUT)` in a
process that never imported this module (TFDS reads it from its files).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from dsbs_jax import atomic
from dsbs_jax.data import paths
from dsbs_jax.data.cards import TaskCard
from dsbs_jax.data.sources import read_released
from dsbs_jax.errors import UserError
from dsbs_jax.records import OK, Record, read_records

FEATURES = ("id", "input", "gold_label", "teacher_label", "rationale", "status")
OUR_SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION_FRACTION = 0.1


def carve_validation(
    records: list[Record], fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """(train, validation): validation is the first ceil(fraction * n) of a seeded permutation."""
    perm = np.random.default_rng(seed).permutation(len(records))
    n_val = math.ceil(fraction * len(records))
    return [records[i] for i in perm[n_val:]], [records[i] for i in perm[:n_val]]


def _released_name(card: TaskCard, split: str) -> str:
    """Maps our split name (or a released one) to the released split name."""
    mapped = card.released_split(split)
    if mapped is None:
        raise UserError(f"{card.name}: unknown split {split!r} for --records")
    return mapped


def _refuse_shared_files(card: TaskCard, record_files: dict[str, str]) -> None:
    """One file as the train and the test split would score the student on what it trained on."""
    train = card.splits.get("train", "train")
    test = card.splits.get("test", "test")
    if train in record_files and test in record_files:
        a, b = record_files[train], record_files[test]
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            raise UserError(
                f"--records: {b} is both the train and the test split; the test split must hold "
                "other examples"
            )


def _not_empty(records: list[Record], path: str) -> list[Record]:
    """A split file without one record is a mistake (a wrong file, a failed copy), not a split."""
    if not records:
        raise UserError(f"{path}: no records (the file is empty)")
    return records


def collect_records(
    card: TaskCard,
    source_dir: str | None,
    record_files: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, list[Record]]:
    """Records per released split: from `record_files` (split -> JSONL) or the released layout."""
    record_files = {_released_name(card, s): p for s, p in (record_files or {}).items()}
    _refuse_shared_files(card, record_files)
    if source_dir is not None and not os.path.isdir(source_dir):
        raise UserError(f"{source_dir}: no such directory")
    out: dict[str, list[Record]] = {}
    for split, path in record_files.items():
        log(f"reading {split}: {path}")
        out[split] = _not_empty(read_records(path), path)
    if source_dir is not None:
        for split, file in card.gold_files.items():
            gold = os.path.join(source_dir, file)
            if split in out or not (os.path.exists(gold) or os.path.islink(gold)):
                continue
            log(f"reading {split}: {gold} + llm/{split}_CoT_*.json")
            out[split] = _not_empty(read_released(card, source_dir, split), gold)
    if not out:
        where = source_dir if source_dir is not None else "--records"
        raise UserError(
            f"{where}: no {card.name} records found (gold files: "
            f"{', '.join(card.gold_files.values())})"
        )
    return out


def build_splits(
    card: TaskCard, released: dict[str, list[Record]], log: Callable[[str], None] = print
) -> dict[str, list[Record]]:
    """Our train / validation / test splits from the released ones (see the module docstring)."""
    train_name = card.splits.get("train", "train")
    val_name = card.splits.get("validation") or "valid"  # "valid": from --records (cqa, svamp)
    test_name = card.splits.get("test", "test")
    fraction = card.validation_fraction or DEFAULT_VALIDATION_FRACTION
    out: dict[str, list[Record]] = {}
    if train_name in released:
        train = released[train_name]
        if val_name and val_name in released:
            out["train"], out["validation"] = train, released[val_name]
        else:
            out["train"], out["validation"] = carve_validation(train, fraction)
            log(f"validation: {fraction:.0%} of released {train_name} (seed 0)")

    elif val_name and val_name in released:
        out["train"], out["validation"] = carve_validation(released[val_name], fraction)
        log(
            f"no released {train_name} split: train is built from released {val_name} "
            f"({len(out['train'])} examples); validation is {fraction:.0%} of it (seed 0)"
        )
    else:
        raise UserError(f"{card.name}: neither a {train_name!r} nor a validation split to train on")
    if not out["train"]:
        raise UserError(
            f"{card.name}: {len(out['validation'])} record(s) are too few to carve a "
            f"{fraction:.0%} validation split from and keep some to train on; give a "
            f"validation file (--records {val_name}=FILE) or more records"
        )
    if test_name in released:
        out["test"] = released[test_name]
    else:
        log(f"no released {test_name} split: the dataset has no test split")
    return out


def _example(r: Record) -> dict[str, str]:
    return {
        "id": r.id,
        "input": r.input,
        "gold_label": r.gold_label or "",
        "teacher_label": r.teacher_label or "",
        "rationale": r.rationale or "",
        "status": r.status,
    }


def _builder_class(name: str, splits: dict[str, list[Record]]) -> type:
    """A one-off TFDS builder for `name` whose examples are the given records."""
    import tensorflow_datasets as tfds

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(paths.VERSION)
        RELEASE_NOTES = {paths.VERSION: "Records of dsbs-jax, one example per record."}
        # No checksums file to look for (and TFDS's lookup of one needs `importlib_resources`
        # on Python >= 3.9, which TFDS does not declare).
        code_path = None

        def _info(self):
            return self.dataset_info_from_configs(
                description="dsbs-jax records: input, gold and teacher labels, rationale.",
                features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FEATURES}),
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(records) for s, records in splits.items()}

        def _generate_examples(self, records):
            for i, r in enumerate(records):
                yield i, _example(r)

        # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared";
        # nothing is downloaded here, and `write_tfds` logs what it writes.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    Builder.name = name
    return Builder


@contextlib.contextmanager
def _temp_files_under(folder: str) -> Iterator[None]:
    """Python's temporary files go under `folder` for the block: a TFDS builder without a
    dataset_info yet makes an empty `tmp*tfds` folder in /tmp that it never removes; under the
    aside folder, it goes with it."""
    os.makedirs(folder, exist_ok=True)
    saved = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = saved


def _remove_stale_tmp(data_dir: str, name: str) -> None:
    """Removes what killed runs of `prepare` left aside (their process is gone)."""
    prefix = f".{name}.tmp-"
    for entry in os.listdir(data_dir):
        pid = entry[len(prefix) :]
        if entry.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(data_dir, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_tfds(
    dataset: str,
    splits: dict[str, list[Record]],
    data_dir: str,
    log: Callable[[str], None] = print,
) -> str:
    """Writes `dsbs_<dataset>` 1.0.0 under data_dir and returns its path.

    The new version is written aside (`data_dir/.dsbs_<dataset>.tmp-<pid>/`) and swapped in
    when complete, so an older copy stays readable until then: a kill or a failure at any
    moment leaves the old dataset or the new one, never none.
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    name = paths.tfds_dataset_name(dataset)
    version_dir = os.path.join(data_dir, name, paths.VERSION)
    try:
        os.makedirs(os.path.join(data_dir, name), exist_ok=True)
    except OSError as e:
        raise UserError(f"{data_dir}: cannot write the dataset here ({e.strerror})") from None
    atomic.recover_dir(version_dir)
    _remove_stale_tmp(data_dir, name)
    for split, records in splits.items():
        counts = collections.Counter(r.status for r in records)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        log(f"writing {split}: {len(records)} examples ({detail or 'none'})")
        if split == "train" and records and not counts[OK]:
            log(
                "  no train record has a teacher rationale and label (status ok): the "
                "rationale and distillation tasks of this dataset have nothing to train on"
            )
    tmp_dir = os.path.join(data_dir, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        with _temp_files_under(tmp_dir):
            _builder_class(name, splits)(data_dir=tmp_dir).download_and_prepare()
        replacing = os.path.exists(version_dir)
        atomic.replace_dir(os.path.join(tmp_dir, name, paths.VERSION), version_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # a failed first write leaves no empty dataset folder
            os.rmdir(os.path.join(data_dir, name))
    log(f"{'replaced' if replacing else 'wrote'} {version_dir}")
    return version_dir


def prepare(
    card: TaskCard,
    source_dir: str | None,
    data_dir: str,
    record_files: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Reads, splits and writes one dataset; returns the number of examples per split."""
    released = collect_records(card, source_dir, record_files, log)
    splits = build_splits(card, released, log)
    write_tfds(card.name, splits, data_dir, log)
    return {s: len(r) for s, r in splits.items()}
