"""`dsbs sweep`: every method at every training-set size and seed, same model and budget.

One process runs the whole sweep, one run after another:

    for method, fraction, seed:    (skipping runs already in OUT/results.jsonl)
        trainer.train(MODEL_DIR = OUT/runs/<method>/<fraction>/<seed>, TRAIN_SPLIT = train[:N])
        load the final checkpoint, greedy-decode a fixed test subset, score it against gold
        append the run's line to OUT/results.jsonl
    write OUT/report.md, OUT/table.md and OUT/accuracy.png

The budget is the same for every method: STEPS optimizer steps over batches of BATCH inputs.
A dsbs batch carries each of its BATCH inputs twice (`predict:` -> label, `explain:` ->
rationale, loss alpha * L_label + (1 - alpha) * L_rationale, the trainer's `exact` weighting),
so it processes 2 x BATCH sequences per step, as the paper's two forward passes do. The
compute-matched baseline `distill_matched` is distillation given the same number of sequences:
twice the steps at the same batch (2 x STEPS x BATCH label sequences, the same count of
sequences and more optimizer updates than dsbs). It cannot match dsbs's target tokens, which
are mostly rationale tokens that a label-only run has no use for; what it separates is whether
dsbs's gain is the extra passes over the inputs or what the rationales say.

Identical train steps compile once per sweep (JAX's persistent compilation cache under
OUT/.jax_cache); evaluation decodes with one jitted decoder per (model, length).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

from dsbs_jax.errors import UserError
from dsbs_jax.model.t5 import T5Config
from dsbs_jax.report import results as results_lib
from dsbs_jax.report import scoring

METHODS = ("finetune", "distill", "distill_matched", "dsbs")
SWEEP_FILE = "sweep.json"

# Students trained from scratch (tied embeddings; T5 v1.1 otherwise). `quickstart` is sized for
# a laptop CPU's minutes: d_model 64 with 4 heads of 16 (at 600 steps of 16 its dsbs student's
# own rationales reached the right answer 24.5% of the time against 6% for d_model 32 with
# 2 heads; docs/quickstart.md), `full` for `dsbs quickstart --budget full`; any
# dsbs_jax/gin_configs/models/<name>.gin (t5_1_1_small, ...) also works, as does a .gin path.
MODELS: dict[str, T5Config] = {
    "quickstart": T5Config(
        vocab_size=0,
        emb_dim=64,
        num_heads=4,
        head_dim=16,
        num_encoder_layers=2,
        num_decoder_layers=2,
        mlp_dim=128,
        dropout_rate=0.0,
        logits_via_embedding=True,
    ),
    "micro": T5Config(  # for tests: compiles in seconds, learns nothing much
        vocab_size=0,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        num_encoder_layers=1,
        num_decoder_layers=1,
        mlp_dim=32,
        dropout_rate=0.0,
        logits_via_embedding=True,
    ),
    "full": T5Config(
        vocab_size=0,
        emb_dim=128,
        num_heads=4,
        head_dim=32,
        num_encoder_layers=3,
        num_decoder_layers=3,
        mlp_dim=256,
        dropout_rate=0.0,
        logits_via_embedding=True,
    ),
}

# Settings that change what a finished run means; a resumed sweep must agree on them.
_CORE = (
    "task",
    "steps",
    "batch_size",
    "model",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "lengths",
    "test_examples",
    "seed",
    "alpha",
    "score_rationale",
    "initial_checkpoint",
    "vocabulary",
)


@dataclasses.dataclass
class SweepConfig:
    """What a sweep trains and how. `lengths` None: measured from the data (see `lengths_for`)."""

    task: str
    data_dir: str
    out: str
    methods: tuple[str, ...] = ("finetune", "distill", "dsbs")
    fractions: tuple[float, ...] = (12.5, 25.0, 50.0, 100.0)
    seeds: int = 3
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    model: str = "quickstart"
    learning_rate: float = 3e-3
    warmup_steps: int | None = None  # default: 5% of steps
    weight_decay: float = 0.0
    lengths: dict[str, int] | None = None  # inputs, labels, rationales
    test_examples: int | None = None  # default: the whole test split
    score_rationale: bool = False
    alpha: float = 0.5
    initial_checkpoint: str | None = None
    vocabulary: str | None = None
    workers: int = 1  # processes that run the planned runs side by side (not a core setting)

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        self.fractions = tuple(float(f) for f in self.fractions)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UserError(f"--methods: unknown {bad}; known: {', '.join(METHODS)}")
        if not self.fractions or any(not 0 < f <= 100 for f in self.fractions):
            raise UserError(f"--fractions {self.fractions}: each must be in (0, 100]")
        if self.seeds < 1 or self.steps < 1 or self.batch_size < 1 or self.workers < 1:
            raise UserError("--seeds, --steps, --batch_size and --workers must be at least 1")
        if not 0 < self.alpha < 1:
            raise UserError(f"--alpha {self.alpha}: must be in (0, 1)")
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.steps // 20)

    def core(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in _CORE}


@dataclasses.dataclass
class Plan:
    """One run: which mixture, how many steps and rows per batch, which training slice."""

    method: str
    fraction: float
    seed: int
    mixture: str
    steps: int
    rows: int
    train_examples: int
    target_length: int
    input_length: int = 0  # 0: the sweep's input length
    pack: bool = False  # dsbs: each example's label and rationale share a packed row

    @property
    def model_dir_parts(self) -> tuple[str, str, str]:
        return (self.method, f"{self.fraction:g}", str(self.seed))


# ---------------------------------------------------------------------------------------- model


def model_config(name: str) -> T5Config:
    """A preset (MODELS), a model gin file of the package (`t5_1_1_small`), or a .gin path."""
    if name in MODELS:
        return MODELS[name]
    here = os.path.join(os.path.dirname(__file__), "..", "gin_configs", "models", f"{name}.gin")
    path = name if name.endswith(".gin") else os.path.normpath(here)
    if not os.path.exists(path):
        known = ", ".join(list(MODELS) + sorted(_package_models()))
        raise UserError(f"--model {name!r}: not a preset or a model gin file; known: {known}")
    import gin

    with gin.unlock_config():
        gin.parse_config_file(path, skip_unknown=True)
        gin.bind_parameter("dsbs_jax.model.t5.T5Config.vocab_size", 0)
    return T5Config()  # gin fills the fields; vocab_size 0: taken from the vocabulary


def _package_models() -> list[str]:
    folder = os.path.join(os.path.dirname(__file__), "..", "gin_configs", "models")
    return [f[:-4] for f in os.listdir(folder) if f.endswith(".gin")]


# ---------------------------------------------------------------------------------------- data


def _round_up(n: int, k: int) -> int:
    return int(math.ceil(n / k) * k)


def lengths_for(task: str, data_dir: str, vocab, card, sample: int = 2000) -> dict[str, int]:
    """Token lengths that fit the data: the longest input, label and rationale (+ EOS) among the
    first `sample` train examples, rounded up to a multiple of 8 (labels: 4), capped by the card."""
    from dsbs_jax.data.tasks import LABEL_PREFIX, RATIONALE_PREFIX
    from dsbs_jax.data.vocab import read_prepared

    longest = {"inputs": 1, "labels": 1, "rationales": 1}
    for i, ex in enumerate(read_prepared(task, "train", data_dir)):
        if i >= sample:
            break
        prefix = max(LABEL_PREFIX, RATIONALE_PREFIX, key=lambda p: len(vocab.encode(p)))
        longest["inputs"] = max(longest["inputs"], len(vocab.encode(prefix + ex["input"])))
        for label in (ex["gold_label"], ex["teacher_label"]):
            longest["labels"] = max(longest["labels"], len(vocab.encode(label)))
        longest["rationales"] = max(longest["rationales"], len(vocab.encode(ex["rationale"])))
    cap_in = card.feature_lengths.get("inputs", 1 << 16)
    cap_out = card.feature_lengths.get("targets", 1 << 16)
    return {
        "inputs": min(_round_up(longest["inputs"] + 1, 8), cap_in),
        "labels": min(_round_up(longest["labels"] + 1, 4), cap_out),
        "rationales": min(_round_up(longest["rationales"] + 1, 8), cap_out),
    }


def train_size(task: str, data_dir: str) -> int:
    """Examples in the prepared train split (before any filtering of teacher failures)."""
    import tensorflow_datasets as tfds

    from dsbs_jax.data import paths

    builder = tfds.builder(paths.tfds_dataset_name(task), data_dir=data_dir)
    return int(builder.info.splits["train"].num_examples)


def test_set(task: str, data_dir: str, limit: int | None) -> list[dict[str, str]]:
    """The first `limit` test examples with a gold label (the same ones for every run)."""
    from dsbs_jax.data.vocab import read_prepared

    out = []
    for ex in read_prepared(task, "test", data_dir):
        if ex["gold_label"]:
            out.append(ex)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise UserError(f"{task}: the prepared test split has no examples with a gold label")
    return out


def encode_inputs(vocab, texts: list[str], length: int):
    """Token rows [n, length]: each text + EOS, truncated, zero-padded."""
    import numpy as np

    rows = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = list(vocab.encode(text))[: length - 1] + [1]
        rows[i, : len(ids)] = ids
    return rows


# ---------------------------------------------------------------------------------------- timing


class CompileTimer:
    """Sums JAX's trace, lowering and XLA-compile durations (jax.monitoring events)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            key = event.rsplit("/", 1)[-1].replace("_duration", "")
            self.seconds[key] = self.seconds.get(key, 0.0) + duration

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


@functools.cache
def _decoder(config: T5Config, length: int):
    import jax

    from dsbs_jax.model import decode as decode_lib
    from dsbs_jax.model.t5 import Transformer

    model = Transformer(config)
    return jax.jit(lambda params, tokens: decode_lib.greedy_decode(model, params, tokens, length))


def _step_seconds(model_dir: str) -> float | None:
    """Seconds per step after the first logged window (which holds the compile), from the log."""
    path = os.path.join(model_dir, "train", "metrics.jsonl")
    try:
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    except OSError:
        return None
    rates = [r["steps_per_second"] for r in rows[1:] if r.get("steps_per_second")]
    return 1.0 / statistics.median(rates) if rates else None


# ---------------------------------------------------------------------------------------- runner


class Sweep:
    """Plans, runs (resumably) and reports one sweep."""

    def __init__(self, config: SweepConfig, log: Callable[[str], None] = print):
        self.cfg = config
        self.log = log
        self.out = os.path.abspath(config.out)
        os.makedirs(self.out, exist_ok=True)

    # ---- set-up
    def _setup(self) -> None:
        import jax

        from dsbs_jax.data import vocab as vocab_lib
        from dsbs_jax.data.cards import load_card
        from dsbs_jax.data.tasks import register_card_tasks, register_dsbs_mixture

        cache = os.path.join(self.out, ".jax_cache")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        self.timer = CompileTimer()
        # Kept across runs: runs alike in steps and shapes reuse one optimizer object, so the
        # trainer's jitted programs and the decoders are traced and compiled once per sweep.
        self.optimizers: dict[int, Any] = {}
        self.programs: dict = {}
        self.decoders: dict = {}

        cfg = self.cfg
        self.card = load_card(cfg.task)
        if cfg.vocabulary:
            vocab_lib.set_vocabulary_override(cfg.vocabulary)
        register_card_tasks(self.card, cfg.data_dir)
        self.dsbs_mixture = register_dsbs_mixture(self.card.name, cfg.alpha)
        self.vocab = vocab_lib.get_vocabulary(f"{self.card.name}_label")
        self.lengths = cfg.lengths or lengths_for(
            self.card.name, cfg.data_dir, self.vocab, self.card
        )
        cfg.lengths = dict(self.lengths)
        self.model_config = model_config(cfg.model)
        self.total = train_size(self.card.name, cfg.data_dir)
        self.test = test_set(self.card.name, cfg.data_dir, cfg.test_examples)
        self._check_resume()
        self.mesh = None

    def _check_resume(self) -> None:
        path = os.path.join(self.out, SWEEP_FILE)
        core = self.cfg.core()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f).get("core", {})
            diff = [k for k in core if old.get(k) != core[k]]
            if diff:
                k = diff[0]
                raise UserError(
                    f"{path}: this folder holds a sweep with other settings ({k}: {old.get(k)!r}, "
                    f"now {core[k]!r}); use another --out, or the same settings to resume"
                )
        teacher = [ex for ex in self.test if ex["status"] == "ok"]
        from dsbs_jax import metrics

        self.teacher_accuracy = (
            100.0
            * sum(
                metrics.label_correct(ex["teacher_label"], ex["gold_label"], self.card.metric)
                for ex in teacher
            )
            / len(self.test)
            if teacher
            else None
        )
        info = {
            "core": core,
            "methods": list(self.cfg.methods),
            "fractions": list(self.cfg.fractions),
            "seeds": self.cfg.seeds,
            "train_size": self.total,
            "test_examples": len(self.test),
            "teacher_test_accuracy": self.teacher_accuracy,
            "model_config": dataclasses.asdict(self.model_config),
        }
        tmp = f"{path}.{os.getpid()}.tmp"  # workers write it too
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def plans(self) -> list[Plan]:
        """Every run, seeds outermost so an interrupted sweep has whole seeds done first."""
        cfg, name = self.cfg, self.card.name
        out = []
        for s in range(cfg.seeds):
            for fraction in cfg.fractions:
                n = max(1, round(self.total * fraction / 100))
                for method in cfg.methods:
                    steps, rows, pack = cfg.steps, cfg.batch_size, False
                    target, inputs = self.lengths["labels"], self.lengths["inputs"]
                    if method == "finetune":
                        mixture = f"{name}_finetune"
                    elif method in ("distill", "distill_matched"):
                        mixture = f"{name}_distill"
                        steps = 2 * cfg.steps if method == "distill_matched" else cfg.steps
                    else:
                        # Both tasks of an example are adjacent in the stream (exact weighting),
                        # so a row sized for the pair packs them together: batch_size rows hold
                        # about batch_size examples, and label rows are not padded to the
                        # rationale's length.
                        mixture, pack = self.dsbs_mixture, True
                        target = self.lengths["labels"] + self.lengths["rationales"]
                        inputs = 2 * self.lengths["inputs"]
                    out.append(
                        Plan(method, fraction, cfg.seed + s, mixture, steps, rows, n, target,
                             inputs, pack)
                    )  # fmt: skip
        return out

    # ---- one run
    def _train(self, plan: Plan, model_dir: str):
        from dsbs_jax.train import optimizers, trainer

        cfg = self.cfg
        if plan.steps not in self.optimizers:
            schedule = optimizers.learning_rate_schedule(
                "cosine", cfg.learning_rate, min(cfg.warmup_steps, plan.steps - 1), plan.steps
            )
            self.optimizers[plan.steps] = optimizers.make_optimizer(
                schedule, name="adamw", weight_decay=cfg.weight_decay, clip_grad_norm=1.0
            )
        tx = self.optimizers[plan.steps]
        with open(os.path.join(model_dir, "train.log"), "w") as f, contextlib.redirect_stdout(f):
            return trainer.train(
                model_dir=model_dir,
                mixture_or_task_name=plan.mixture,
                task_feature_lengths={
                    "inputs": plan.input_length or self.lengths["inputs"],
                    "targets": plan.target_length,
                },
                train_steps=plan.steps,
                batch_size=plan.rows,
                model_config=self.model_config,
                loss_weighting="exact",
                random_seed=plan.seed,
                initial_checkpoint_path=cfg.initial_checkpoint,
                train_split=f"train[:{plan.train_examples}]",
                eval_period=0,
                test_split=None,
                checkpoint_period=plan.steps,
                checkpoint_every_secs=None,
                keep_checkpoints=1,
                log_every=max(1, plan.steps // 5),
                pack=plan.pack,
                optimizer=tx,
                programs=self.programs,
            )

    def _evaluate(self, plan: Plan, model_dir: str, step: int) -> dict[str, Any]:
        import flax.linen as nn
        import jax
        import numpy as np

        from dsbs_jax.data.tasks import LABEL_PREFIX, RATIONALE_PREFIX
        from dsbs_jax.train.inference import load_model

        lin = self.lengths["inputs"]
        model, params, mesh, rules = load_model(
            self.model_config,
            plan.mixture,
            os.path.join(model_dir, f"checkpoint_{step}"),
            (lin, plan.target_length),
        )
        config = model.config
        data = mesh.shape["data"]
        batch = _round_up(min(len(self.test), 256), data)

        def decode(prefix: str, length: int) -> list[str]:
            tokens = encode_inputs(self.vocab, [prefix + ex["input"] for ex in self.test], lin)
            if (config, length) not in self.decoders:
                self.decoders[config, length] = _decoder(config, length)
            fn = self.decoders[config, length]
            outs = []
            with mesh, nn.logical_axis_rules(rules):
                for start in range(0, len(tokens), batch):
                    chunk = tokens[start : start + batch]
                    real = len(chunk)
                    if real < batch:
                        chunk = np.concatenate([chunk, np.zeros((batch - real, lin), np.int32)])
                    rows = np.asarray(jax.device_get(fn(params, chunk)))[:real]
                    outs.extend(rows.tolist())
            texts = []
            for row in outs:
                row = row[: row.index(1)] if 1 in row else row
                texts.append(self.vocab.decode([t for t in row if t > 1]))
            return texts

        golds = [ex["gold_label"] for ex in self.test]
        predictions = decode(LABEL_PREFIX, self.lengths["labels"])
        out: dict[str, Any] = {
            "accuracy": scoring.accuracy(predictions, golds, self.card.metric),
            "predictions": predictions,
        }
        if self.cfg.score_rationale and plan.method == "dsbs":  # the one trained to explain
            rationales = decode(RATIONALE_PREFIX, self.lengths["rationales"])
            acc, answers = scoring.rationale_accuracy(rationales, golds, self.card)
            out |= {"rationale_accuracy": acc, "rationales": rationales, "answers": answers}
        return out

    def _write_predictions(self, model_dir: str, ev: dict[str, Any]) -> None:
        path = os.path.join(model_dir, "test_predictions.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i, ex in enumerate(self.test):
                row = {"id": ex["id"], "gold": ex["gold_label"], "prediction": ev["predictions"][i]}
                if "rationales" in ev:
                    row |= {"rationale": ev["rationales"][i], "rationale_answer": ev["answers"][i]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def _log_scalars(self, model_dir: str, step: int, scalars: dict[str, float]) -> None:
        from clu import metric_writers

        writer = metric_writers.create_default_writer(os.path.join(model_dir, "eval"))
        writer.write_scalars(step, scalars)
        writer.close()

    def run_one(self, plan: Plan) -> results_lib.RunResult:
        """Trains and scores one run; its MODEL_DIR starts empty."""
        model_dir = os.path.join(self.out, "runs", *plan.model_dir_parts)
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)  # an unfinished run: start it again from scratch
        os.makedirs(model_dir)
        self.timer.take()
        t0 = time.perf_counter()
        result = self._train(plan, model_dir)
        t_train = time.perf_counter() - t0
        compile_train = self.timer.take()
        t1 = time.perf_counter()
        ev = self._evaluate(plan, model_dir, result.step)
        t_eval = time.perf_counter() - t1
        compile_eval = self.timer.take()
        scalars = {"test/accuracy": ev["accuracy"]}
        if "rationale_accuracy" in ev:
            scalars["test/rationale_accuracy"] = ev["rationale_accuracy"]
        self._log_scalars(model_dir, result.step, scalars)
        self._write_predictions(model_dir, ev)
        per_step = _step_seconds(model_dir)
        steps_s = per_step * plan.steps if per_step else None
        ct = sum(compile_train.values())
        timing = {
            "train": round(t_train, 3),
            "train_compile": round(ct, 3),
            "train_steps": round(steps_s, 3) if steps_s else None,
            "train_other": round(t_train - ct - steps_s, 3) if steps_s else None,
            "eval": round(t_eval, 3),
            "eval_compile": round(sum(compile_eval.values()), 3),
        }
        return results_lib.RunResult(
            method=plan.method,
            fraction=plan.fraction,
            seed=plan.seed,
            train_examples=plan.train_examples,
            steps=plan.steps,
            accuracy=round(ev["accuracy"], 4),
            rationale_accuracy=(
                round(ev["rationale_accuracy"], 4) if "rationale_accuracy" in ev else None
            ),
            test_examples=len(self.test),
            seconds=round(time.perf_counter() - t0, 3),
            timing={k: v for k, v in timing.items() if v is not None},
            model_dir=os.path.relpath(model_dir, self.out),
        )

    # ---- everything
    def run(self) -> list[results_lib.RunResult]:
        """Runs every planned run not yet in the results file; returns all finished runs.

        With `workers` > 1 the runs go to that many worker processes (`report.workers`), each
        claiming the next unclaimed run; every run is seeded on its own, so which process runs
        it does not change its result.
        """
        self._setup()
        plans = self.plans()
        todo = self.todo(plans)
        self.log(
            f"sweep {self.cfg.task}: {len(plans)} runs ({len(plans) - len(todo)} already done), "
            f"lengths {self.lengths}, train set {self.total}, test {len(self.test)} examples"
            + (f", {self.cfg.workers} worker processes" if self.cfg.workers > 1 else "")
        )
        if self.cfg.workers > 1 and len(todo) > 1:
            from dsbs_jax.report import workers

            workers.run_in_workers(self.cfg, min(self.cfg.workers, len(todo)), self.log)
        else:
            self.run_plans(todo, len(plans))
        return results_lib.read_results(self.out)

    def todo(self, plans: list[Plan]) -> list[Plan]:
        """The planned runs not yet in the results file."""
        done = {r.key for r in results_lib.read_results(self.out)}
        return [p for p in plans if results_lib.run_key(p.method, p.fraction, p.seed) not in done]

    def run_plans(
        self, todo: list[Plan], total: int, claim: Callable[[Plan], bool] | None = None
    ) -> None:
        """Runs `todo` in order (skipping those `claim` refuses), appending each result; the log
        counts finished runs out of `total`."""
        t0 = time.perf_counter()
        for plan in todo:
            if claim is not None and not claim(plan):
                continue
            r = self.run_one(plan)
            results_lib.append_result(self.out, r)
            done = len(results_lib.read_results(self.out))
            extra = (
                f", rationale->answer {r.rationale_accuracy:.1f}%"
                if r.rationale_accuracy is not None
                else ""
            )
            t = r.timing
            self.log(
                f"[{done}/{total}] {plan.method} "
                f"{plan.train_examples} ex seed {plan.seed}: "
                f"accuracy {r.accuracy:.1f}%{extra} ({r.seconds:.1f} s: train {t['train']:.1f} "
                f"of which compile {t['train_compile']:.1f}, eval {t['eval']:.1f}; "
                f"elapsed {time.perf_counter() - t0:.0f} s)"
            )
