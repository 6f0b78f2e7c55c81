"""Evaluation of a checkpoint and prediction on a file of inputs (`dsbs eval`, `dsbs predict`)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.linen as nn
import gin

from dsbs_jax import atomic
from dsbs_jax.data import cards as cards_lib
from dsbs_jax.data import tasks as tasks_lib
from dsbs_jax.data import vocab as vocab_lib
from dsbs_jax.data.text import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.errors import UserError, located
from dsbs_jax.model.t5 import T5Config, Transformer, resolve_kernels
from dsbs_jax.names import mixture_or_task_name
from dsbs_jax.progress import Progress
from dsbs_jax.records import iter_jsonl
from dsbs_jax.train import checkpoints, checks, evaluation, partitioning
from dsbs_jax.train.plan import model_config_for
from dsbs_jax.train.step import mesh_platform


def load_model(config: T5Config, name: str, checkpoint_path: str, lengths: tuple[int, int]):
    """The network and its parameters from a checkpoint, sharded on the default mesh."""
    mesh = partitioning.make_mesh()
    rules = partitioning.logical_axis_rules()
    config = resolve_kernels(model_config_for(config, name), mesh_platform(mesh))
    model = Transformer(config)

    with mesh, nn.logical_axis_rules(rules):
        _, _, abstract = partitioning.param_layout(model, lengths, mesh, rules)
        params = checkpoints.load_params(checkpoint_path, abstract)
    return model, params, mesh, rules


@gin.configurable
def evaluate_checkpoint(
    checkpoint_path: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: dict[str, int] = gin.REQUIRED,
    model_config: T5Config = gin.REQUIRED,
    split: str = "test",
    batch_size: int = 64,
    vocabulary_path: str | None = None,
    output_dir: str | None = None,
    num_examples: int | None = None,
    data_dir: str | None = None,
) -> dict[str, float]:
    """Scores a checkpoint on a split with the tasks' metrics; returns `{task/metric: value}`."""
    checks.check_feature_lengths(task_feature_lengths)
    checks.require_int("BATCH_SIZE", batch_size)
    checks.require_int("EVAL_EXAMPLES", num_examples, allow_none=True)
    tasks_lib.bind_tasks(mixture_or_task_name, data_dir, vocabulary_path)
    lengths = (task_feature_lengths["inputs"], task_feature_lengths["targets"])
    model, params, mesh, rules = load_model(
        model_config, mixture_or_task_name, checkpoint_path, lengths
    )
    evaluator = evaluation.Evaluator(
        mixture_or_task_name, split, task_feature_lengths, output_dir, num_examples
    )
    if not evaluator:
        raise UserError(f"{mixture_or_task_name}: no task with metrics has a {split!r} split")
    say = functools.partial(print, flush=True)
    return evaluator.evaluate(model, params, mesh, rules, batch_size, say=say).metrics


def _read_inputs(path: str, card: cards_lib.TaskCard) -> list[dict[str, Any]]:
    """Each line's id (text: `id`, else the card's id field, else the line number) and input:
    `input` as given, or the card's fields rendered by its input template."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise located(path, lineno, "expected a JSON object")
        if "input" in obj and not isinstance(obj["input"], str):
            raise located(
                path, lineno, f"expected text, got {type(obj['input']).__name__}", "input"
            )
        if isinstance(obj.get("input"), str) and not all(
            f in obj for f in card.fields if f != "input"
        ):
            text = obj["input"]
        else:
            try:
                text = card.render_input(obj)
            except KeyError as e:
                raise located(
                    path, lineno, "missing (give `input` or the card's fields)", field=e.args[0]
                ) from None
        rid = obj.get("id", obj.get(card.id_field or "id"))
        rows.append({"id": str(lineno) if rid is None else str(rid), "input": text})
    return rows


@gin.configurable
def predict_file(
    input_file: str,
    output_file: str,
    checkpoint_path: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    model_config: T5Config = gin.REQUIRED,
    explain: bool = False,
    input_length: int = 512,
    target_length: int = 256,
    batch_size: int = 64,
    vocabulary_path: str | None = None,
    beam_size: int = 1,
    data_dir: str | None = None,
) -> int:
    """Writes `{id, input, prediction[, rationale]}` lines for each input; returns the count.

    Greedy decoding, or beam search with `beam_size` > 1 (best beam)."""
    for name, value in (("INPUT_LENGTH", input_length), ("TARGET_LENGTH", target_length)):
        checks.require_int(name, value, minimum=2)
    checks.require_int("BATCH_SIZE", batch_size)
    checks.require_int("BEAM_SIZE", beam_size)
    if os.path.isdir(output_file):
        raise UserError(f"--output_file {output_file}: is a directory, expected a file")
    card = cards_lib.load_card(task)
    rows = _read_inputs(input_file, card)
    if not rows:
        raise UserError(f"{input_file}: no inputs")
    name = mixture_or_task_name(card.name, "label")
    tasks_lib.bind_tasks(name, data_dir, vocabulary_path)
    vocab = vocab_lib.get_vocabulary(name)
    model, params, mesh, rules = load_model(
        model_config, name, checkpoint_path, (input_length, target_length)
    )
    decode_fn = evaluation.make_decode_fn(model, target_length, beam_size)
    batch = max(batch_size // mesh.shape["data"], 1) * mesh.shape["data"]

    cut = 0

    def run(prefix: str) -> list[str]:
        nonlocal cut
        texts = [prefix + r["input"] for r in rows]
        with mesh, nn.logical_axis_rules(rules):
            what = "predicting" if prefix == LABEL_PREFIX else "explaining"
            progress = Progress(what, functools.partial(print, flush=True), unit="inputs")
            out, n_cut = evaluation.decode_texts(
                decode_fn, params, vocab, texts, input_length, batch, progress
            )
        if prefix == LABEL_PREFIX:
            cut = n_cut
        return out

    predictions = run(LABEL_PREFIX)
    rationales = run(RATIONALE_PREFIX) if explain else None
    if cut:
        print(
            f"{cut} of {len(rows)} inputs are longer than INPUT_LENGTH={input_length} tokens "
            f"and were cut to it",
            flush=True,
        )
    with atomic.open_atomic(output_file) as f:
        for i, r in enumerate(rows):
            out = {"id": r["id"], "input": r["input"], "prediction": predictions[i]}
            if rationales is not None:
                out["rationale"] = rationales[i]
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    return len(rows)
