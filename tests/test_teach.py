"""`teacher/run`: what `dsbs teach` calls, from Python (input selection, backends, sampling)."""

from __future__ import annotations

import json

import pytest

from dsbs_jax.builtin import arith
from dsbs_jax.data.cards import load_card
from dsbs_jax.errors import UserError
from dsbs_jax.records import read_records
from dsbs_jax.teacher import run as teach_lib
from dsbs_jax.teacher.backends.files import FilesBackend
from dsbs_jax.teacher.backends.openai import OpenAIBackend
from dsbs_jax.teacher.backends.simulated import SimulatedBackend

Selection = teach_lib.InputSelection


@pytest.fixture
def arith_source(tmp_path):
    arith.write_source(tmp_path / "arith", {"train": 6, "test": 3}, seed=1)
    return tmp_path / "arith"


def test_input_selection(arith_source, tmp_path, monkeypatch):
    card = load_card("arith")
    gold = teach_lib.load_inputs(card, Selection("test", source_dir=arith_source))
    train = teach_lib.load_inputs(card, Selection("train", source_dir=arith_source))
    assert len(gold) == 3 and len(train) == 6 and not {r.id for r in gold} & {r.id for r in train}
    first_two = teach_lib.load_inputs(card, Selection(source_dir=arith_source, limit=2))
    assert [r.id for r in first_two] == [r.id for r in train[:2]]
    # The source folder defaults to $DSBS_DATA_DIR/<task>.
    monkeypatch.setenv("DSBS_DATA_DIR", str(arith_source.parent))
    assert [r.id for r in teach_lib.load_inputs(card, Selection("test"))] == [r.id for r in gold]
    monkeypatch.delenv("DSBS_DATA_DIR")
    with pytest.raises(UserError, match="--source_dir: required"):
        teach_lib.load_inputs(card, Selection("test"))
    # --inputs: a JSONL of the card's fields, whatever the split.
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "q1", "question": "What is 1 plus 1?", "answer": "2"}))
    (only,) = teach_lib.load_inputs(card, Selection("valid", inputs=inputs))
    assert only.id == "q1" and only.gold_label == "2"
    with pytest.raises(UserError, match="--limit 0: must be at least 1"):
        teach_lib.load_inputs(card, Selection(inputs=inputs, limit=0))
    with pytest.raises(UserError, match="arith_validation.json: no such file"):
        teach_lib.load_inputs(card, Selection("valid", source_dir=arith_source))
    with pytest.raises(UserError, match="svamp has no split 'dev'; splits: "):
        teach_lib.load_inputs(load_card("svamp"), Selection("dev", source_dir=tmp_path))


def test_backend_factory_and_sampling_defaults(arith_source, tmp_path):
    card, svamp = load_card("arith"), load_card("svamp")
    assert teach_lib.default_backend(card) == "simulated"
    assert teach_lib.default_backend(svamp) == "files"
    sel = Selection("test", source_dir=arith_source)
    assert isinstance(teach_lib.make_backend(card, "simulated", sel, seed=3), SimulatedBackend)
    openai = teach_lib.OpenAISettings(base_url="http://127.0.0.1:9/v1", model="m")
    backend = teach_lib.make_backend(card, "openai", sel, openai=openai)
    assert isinstance(backend, OpenAIBackend) and backend.model == "m"
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": "x", "raw": "1 + 1 = 2. The answer is 2."}))
    files = teach_lib.make_backend(card, "files", sel, teacher_file=raw)
    assert isinstance(files, FilesBackend) and files.source == str(raw)
    with pytest.raises(UserError, match="no output matches any of the 3 inputs"):
        teach_lib.check_outputs_match(files, teach_lib.load_inputs(card, sel))

    plain = teach_lib.Sampling().params(card, "simulated")
    assert (plain.temperature, plain.n, plain.stop, plain.seed) == (0.0, 1, ("Q:",), None)
    several = teach_lib.Sampling(n=5, seed=7, stop=("\n\n",)).params(card, "openai")
    assert (several.temperature, several.stop, several.seed) == (0.7, ("\n\n",), 7)
    with pytest.raises(UserError, match="--self_consistency needs --n 2 or more"):
        teach_lib.Sampling(self_consistency=True).params(card, "files")
    with pytest.raises(UserError, match="--max_tokens 0: must be at least 1"):
        teach_lib.Sampling(max_tokens=0).params(card, "files")


def test_teach_with_the_simulated_backend(arith_source, tmp_path):
    sel = Selection("train", source_dir=arith_source, limit=4)
    result = teach_lib.teach(
        "arith", sel, tmp_path / "o", sampling=teach_lib.Sampling(seed=2), progress=False
    )
    assert result.records_path == tmp_path / "o" / "arith_train.jsonl"
    records = read_records(result.records_path)
    assert len(records) == 4 and result.stats.inputs == 4 and result.stats.failed == 0
    stats = json.loads(result.stats_path.read_text())
    assert stats["backend"] == "simulated" and stats["split"] == "train" and stats["inputs"] == 4
    assert "teach arith train: 4 inputs" in result.summary()
    again = teach_lib.teach(
        "arith", sel, tmp_path / "o2", sampling=teach_lib.Sampling(seed=2), progress=False
    )
    assert [r.raw for r in read_records(again.records_path)] == [r.raw for r in records]
    prompt = teach_lib.prompt_for("arith", sel, index=1)
    assert prompt.startswith("Q: ") and records[1].input in prompt
    with pytest.raises(UserError, match=r"--index 4: out of range 0\.\.3"):
        teach_lib.prompt_for("arith", sel, index=4)
