"""dsbs quickstart: the data stage and the whole command are deterministic in the seed."""

from __future__ import annotations

import filecmp

from dsbs_jax.cli import main
from dsbs_jax.data.vocab import read_prepared
from dsbs_jax.experiments.builtin_data import make_builtin_data

SIZES = {"train": 40, "validation": 8, "test": 8}


def test_data_stage_is_deterministic_and_goes_through_the_teacher(tmp_path):
    a, acc_a = make_builtin_data(str(tmp_path / "a"), SIZES, seed=3, log=lambda s: None)
    b, acc_b = make_builtin_data(str(tmp_path / "b"), SIZES, seed=3, log=lambda s: None)
    assert acc_a == acc_b
    for split in SIZES:
        assert filecmp.cmp(
            tmp_path / "a" / "teach" / f"arith_{split}.jsonl",
            tmp_path / "b" / "teach" / f"arith_{split}.jsonl",
            shallow=False,
        )
    assert filecmp.cmp(f"{a}/dsbs_arith/spm.model", f"{b}/dsbs_arith/spm.model", shallow=False)
    train = list(read_prepared("arith", "train", a))
    assert len(train) == SIZES["train"]
    statuses = {ex["status"] for ex in train}
    assert "ok" in statuses
    ok = [ex for ex in train if ex["status"] == "ok"]
    assert all(ex["rationale"] and ex["teacher_label"] for ex in ok)
    # The teacher is wrong sometimes, and its rationale's last result is its label.
    assert any(ex["teacher_label"] != ex["gold_label"] for ex in ok) or len(ok) < 10


def test_quickstart_end_to_end_twice_gives_the_same_table(tmp_path, capsys):
    flags = ["--steps", "2", "--seeds", "1", "--fractions", "100", "--methods", "finetune,dsbs",
             "--model", "micro", "--test_examples", "8"]  # fmt: skip
    tables = []
    for name in ("one", "two"):
        out = tmp_path / name
        assert main(["quickstart", "--out", str(out), "--seed", "1", *flags]) == 0
        printed = capsys.readouterr().out
        assert "report: " in printed and "plot: " in printed
        tables.append((out / "sweep" / "table.md").read_text())
        assert (out / "sweep" / "accuracy.png").stat().st_size > 1000
    assert "| fine-tuning (gold labels) |" in tables[0]
    assert tables[0] == tables[1]
