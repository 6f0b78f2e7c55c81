"""SeqIO tasks and mixtures on svamp prepared once into a temporary data dir (small vocabulary)."""

import collections
import json
import os
import subprocess
import sys
import types

import pytest
import seqio
import tensorflow as tf

import dsbs_jax.tasks
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.cards import load_card
from dsbs_jax.data.prepare import prepare
from dsbs_jax.data.tasks import register_card_tasks, register_dsbs_mixture
from dsbs_jax.errors import UserError
from dsbs_jax.names import mixture_or_task_name
from dsbs_jax.weighting import tasks_and_rates

LENGTHS = {"inputs": 256, "targets": 128}


@pytest.fixture(scope="module")
def svamp_dir(shared_data, tmp_path_factory):
    """svamp prepared under a fresh data dir with a 400-piece vocabulary; DSBS_DATA_DIR set."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    counts = prepare(load_card("svamp"), str(shared_data / "svamp"), data_dir, log=lambda s: None)
    assert counts == {"train": 720, "validation": 80, "test": 200}
    vocab_lib.train_vocab("svamp", data_dir, vocab_size=400)
    old = os.environ.get("DSBS_DATA_DIR")
    os.environ["DSBS_DATA_DIR"] = data_dir
    yield data_dir
    if old is None:
        os.environ.pop("DSBS_DATA_DIR", None)
    else:
        os.environ["DSBS_DATA_DIR"] = old


def _examples(name, split, lengths=None):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())


def test_registered_names_and_idempotent_import():
    import importlib

    importlib.reload(dsbs_jax.tasks)  # registering twice must not fail
    for ds in ("cqa", "svamp", "esnli", "anli"):
        for suffix in ("label", "rationale", "gold_label"):
            assert f"{ds}_{suffix}" in seqio.TaskRegistry.names()
        for suffix in ("dsbs", "dsbs_a10", "dsbs_a80", "dsbs_a90", "finetune", "distill"):
            assert f"{ds}_{suffix}" in seqio.MixtureRegistry.names()
    m = seqio.get_mixture_or_task("cqa_dsbs_a80")
    assert {t.name: m.get_rate(t) for t in m.tasks} == pytest.approx(
        {"cqa_label": 0.8, "cqa_rationale": 0.2}
    )
    assert [t.name for t in seqio.get_mixture_or_task("cqa_finetune").tasks] == ["cqa_gold_label"]
    assert [t.name for t in seqio.get_mixture_or_task("cqa_distill").tasks] == ["cqa_label"]
    assert register_dsbs_mixture("cqa", 0.125) == "cqa_dsbs_a12p5"
    with pytest.raises(UserError, match="alpha"):
        register_dsbs_mixture("cqa", 1.0)


def test_read_back_in_fresh_process(svamp_dir):
    code = (
        "import tensorflow_datasets as tfds, json, sys;"
        f"b = tfds.builder('dsbs_svamp', data_dir={svamp_dir!r});"
        "print(json.dumps({k: v.num_examples for k, v in b.info.splits.items()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "train": 720,
        "validation": 80,
        "test": 200,
    }


def test_names_come_from_their_parts():
    assert mixture_or_task_name("cqa", "gold_label") == "cqa_gold_label"
    assert mixture_or_task_name("cqa", "distill") == "cqa_distill"
    assert mixture_or_task_name("cqa", "dsbs") == mixture_or_task_name("cqa", "dsbs", 0.5)
    assert mixture_or_task_name("cqa", "dsbs", 0.5) == "cqa_dsbs"
    assert mixture_or_task_name("cqa", "dsbs", 0.7) == "cqa_dsbs_a70"
    assert mixture_or_task_name("cqa", "dsbs", 0.125) == "cqa_dsbs_a12p5"
    with pytest.raises(ValueError):
        mixture_or_task_name("cqa", "labels")
    with pytest.raises(ValueError):
        mixture_or_task_name("cqa", "label", 0.5)


def test_label_targets_teacher_on_train_gold_elsewhere(svamp_dir):
    train = _examples("svamp_label", "train")
    assert len(train) == 708  # 720 minus 12 unparsed teacher outputs
    assert all(ex["inputs_pretokenized"].startswith(b"predict: ") for ex in train)
    assert {"id", "task", "inputs", "targets", "targets_pretokenized"} <= set(train[0])
    assert all(ex["inputs"][-1] == 1 for ex in train)  # EOS
    gold_train = {
        ex["id"]: ex["targets_pretokenized"] for ex in _examples("svamp_gold_label", "train")
    }
    assert len(gold_train) == 720
    assert any(gold_train[ex["id"]] != ex["targets_pretokenized"] for ex in train)
    val = _examples("svamp_label", "validation")
    val_gold = _examples("svamp_gold_label", "validation")
    assert len(val) == 80 and [e["targets_pretokenized"] for e in val] == [
        e["targets_pretokenized"] for e in val_gold
    ]
    rationale = _examples("svamp_rationale", "validation")
    assert len(rationale) == 79 and rationale[0]["inputs_pretokenized"].startswith(b"explain: ")


def test_split_slicing(svamp_dir):
    assert len(_examples("svamp_gold_label", "train[:25%]")) == 180
    assert len(_examples("svamp_gold_label", "train[:500]")) == 500
    sliced = _examples("svamp_label", "train[:100]")
    # train slices still target the teacher label (the base split is train)
    gold = {e["id"]: e["targets_pretokenized"] for e in _examples("svamp_gold_label", "train")}
    assert any(gold[e["id"]] != e["targets_pretokenized"] for e in sliced)


def test_split_slicing_on_mixtures(svamp_dir):
    """seqio's own mixture API takes a slice (it keeps a task only when `split in task.splits`)."""
    mixture = seqio.get_mixture_or_task("svamp_dsbs")
    ds = mixture.get_dataset(
        LENGTHS,
        split="train[:25%]",
        shuffle=False,
        num_epochs=1,
        passthrough_features=["id", "task"],
    )
    ids = collections.defaultdict(set)
    for ex in ds.as_numpy_iterator():
        ids[ex["task"]].add(ex["id"])
    quarter = {e["id"] for e in _examples("svamp_gold_label", "train[:25%]")}
    assert set(ids) == {b"svamp_label", b"svamp_rationale"}
    assert len(quarter) == 180  # a quarter of the 720 train records
    assert ids[b"svamp_label"] and ids[b"svamp_label"] <= quarter
    assert ids[b"svamp_rationale"] and ids[b"svamp_rationale"] <= quarter
    splits = seqio.get_mixture_or_task("svamp_label").splits
    assert "train[:25%]" in splits and "validation[:10]+test" in splits
    assert "bogus[:10]" not in splits and "train+bogus" not in splits
    with pytest.raises(ValueError, match="No datasets have a 'bogus"):
        mixture.get_dataset(LENGTHS, split="bogus[:10%]")


@pytest.mark.parametrize("name, label_share", [("svamp_dsbs", 0.5), ("svamp_dsbs_a80", 0.8)])
def test_mixture_shares(svamp_dir, name, label_share):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        LENGTHS, split="train", shuffle=True, seed=0, num_epochs=None, passthrough_features=["task"]
    )
    drawn = collections.Counter(ex["task"] for ex in ds.take(2000).as_numpy_iterator())
    assert abs(drawn[b"svamp_label"] / 2000 - label_share) <= 0.03


def test_metric_and_postprocess(svamp_dir):
    task = seqio.get_mixture_or_task("svamp_label")
    (metric,) = task.metric_fns
    target = task.postprocess_fn(b"( 84.0 / 2.0 )", example={}, is_target=True)
    assert metric([target], ["(84 / 2)"]) == {"accuracy": 100.0}


def test_vocabulary_resolution_order(svamp_dir, tmp_path, monkeypatch):
    vocab = vocab_lib.get_vocabulary("svamp_dsbs")
    default = os.path.join(svamp_dir, "dsbs_svamp", "spm.model")
    assert vocab.sentencepiece_model_file == default
    assert vocab.vocab_size == 500  # 400 pieces + 100 sentinels
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    other = str(tmp_path / "other.model")
    vocab_lib.train_vocab("svamp", svamp_dir, vocab_size=350, out_path=other)
    monkeypatch.setenv("DSBS_VOCAB", other)
    assert vocab.sentencepiece_model_file == other and vocab.vocab_size == 450
    # A run that names a vocabulary registers its tasks with it; the next run that names none
    # gets the dataset's own again (here: $DSBS_VOCAB).
    tasks_lib.bind_tasks("svamp_dsbs", vocabulary_path=default)
    assert vocab_lib.get_vocabulary("svamp_dsbs").vocab_size == 500
    tasks_lib.bind_tasks("svamp_dsbs")
    assert vocab_lib.get_vocabulary("svamp_dsbs").vocab_size == 450
    monkeypatch.setenv("DSBS_VOCAB", str(tmp_path / "missing.model"))
    with pytest.raises(UserError, match="no vocabulary"):
        vocab.encode("x")


def test_seqio_data_dir_override(svamp_dir, tmp_path):
    seqio.set_tfds_data_dir_override(str(tmp_path))
    try:
        with pytest.raises(Exception, match="dsbs_svamp"):
            _examples("svamp_gold_label", "test")
    finally:
        seqio.set_tfds_data_dir_override(None)
    assert len(_examples("svamp_gold_label", "test")) == 200


def test_user_card_registers_the_same_way(svamp_dir, tmp_path):
    card_path = tmp_path / "mysvamp.yaml"
    text = open(load_card("svamp").path).read().replace("name: svamp", "name: mysvamp")
    card_path.write_text(text)
    names = register_card_tasks(load_card(str(card_path)), data_dir=svamp_dir)
    assert "mysvamp_dsbs" in names and "mysvamp_label" in seqio.TaskRegistry.names()
    with pytest.raises(Exception, match="dsbs_mysvamp"):
        _examples("mysvamp_label", "test")


def test_cached_task_reads_back(svamp_dir, tmp_path):
    """Writes seqio's cache layout (what cache_tasks_main writes) and reads it with use_cached."""
    task = seqio.get_mixture_or_task("svamp_label")
    cache = tmp_path / "cache"
    task_dir = cache / "svamp_label"
    task_dir.mkdir(parents=True)
    ds = task.preprocess_precache(task.source.get_dataset("test", shuffle=False))
    examples = list(ds.as_numpy_iterator())
    with tf.io.TFRecordWriter(str(task_dir / "test.tfrecord-00000-of-00001")) as w:
        for ex in examples:
            w.write(seqio.dict_to_tfexample(ex).SerializeToString())
    features = {
        k: {
            "shape": [None] if k in ("inputs", "targets") else [],
            "dtype": "int32" if k in ("inputs", "targets") else "string",
        }
        for k in examples[0]
    }
    info = {"num_shards": 1, "features": features, "seqio_version": seqio.__version__}
    (task_dir / "info.test.json").write_text(json.dumps(info))
    (task_dir / "stats.test.json").write_text(json.dumps({"examples": len(examples)}))
    (task_dir / "COMPLETED").write_text("")
    seqio.add_global_cache_dirs([str(cache)])
    try:
        task._cache_dir = None  # re-look for caches
        got = list(
            task.get_dataset(
                LENGTHS, split="test", use_cached=True, shuffle=False
            ).as_numpy_iterator()
        )
    finally:
        seqio.set_global_cache_dirs([])
        task._cache_dir = None
    assert len(got) == 200 and all(ex["inputs"][-1] == 1 for ex in got)  # gold on test
    assert {ex["id"] for ex in got} == {ex["id"] for ex in _examples("svamp_label", "test")}


def test_seqio_scripts_see_our_tasks():
    pytest.importorskip("apache_beam", reason="seqio's cache_tasks_main needs apache-beam")
    import seqio.scripts.cache_tasks_main  # noqa: F401

    assert "svamp_label" in seqio.TaskRegistry.names()


def test_private_input_threads_give_the_same_batches(svamp_dir):
    """tf.data on one private thread (the default on small hosts) yields the batches of its own
    pool, in the same order: only where the work runs changes."""
    from dsbs_jax.train import input_pipeline

    def batches(threads):
        ds, _, _ = input_pipeline.build_dataset("svamp_dsbs", {"inputs": 96, "targets": 64}, 4)
        it = input_pipeline.numpy_batches(ds, start_step=3, threads=threads)
        return [next(it) for _ in range(6)]

    own, private = batches(0), batches(1)
    for a, b in zip(own, private, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), k
    assert input_pipeline.input_threads(0, cores=2) == 1
    assert input_pipeline.input_threads(0, cores=64) == 0
    assert input_pipeline.input_threads(3, cores=2) == 3
    with pytest.raises(UserError, match="INPUT_THREADS -1"):
        input_pipeline.input_threads(-1)


@pytest.mark.parametrize(
    "name, lengths, pack",
    [("svamp_dsbs", {"inputs": 96, "targets": 64}, True), ("svamp_distill", LENGTHS, False)],
)
def test_examples_kept_in_memory_give_the_same_batches(svamp_dir, monkeypatch, name, lengths, pack):
    """A small split's preprocessed examples are kept in memory across epochs: the batches and
    their order over several epochs are those of preprocessing every epoch again."""
    from dsbs_jax.train import input_pipeline

    split = "train[:12]"  # a dozen examples an epoch: 40 batches of 4 rows cross several epochs
    tasks, _ = tasks_and_rates(name)
    assert input_pipeline._keep_in_memory(tasks, split)
    other = types.SimpleNamespace(
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, ["train"])
    )
    assert not input_pipeline._keep_in_memory([other], split)  # not ours: seqio's own path

    def batches():
        ds, _, _ = input_pipeline.build_dataset(name, lengths, 4, split=split, seed=3, pack=pack)
        it = input_pipeline.numpy_batches(ds, threads=1)
        return [next(it) for _ in range(40)]

    kept = batches()
    monkeypatch.setattr(input_pipeline, "MAX_EXAMPLES_IN_MEMORY", 0)
    assert not input_pipeline._keep_in_memory(tasks, split)
    again = batches()
    for a, b in zip(kept, again, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), k
