"""The report of a sweep, rebuilt from its files alone: OUT/report.md, OUT/table.md, OUT/accuracy.png.

Reads OUT/results.jsonl (the finished runs) and OUT/sweep.json (the settings), so `dsbs report
OUT` works on a finished, interrupted or running sweep, on any machine.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

from dsbs_jax import atomic
from dsbs_jax.errors import UserError
from dsbs_jax.names import mixture_or_task_name
from dsbs_jax.report import plots, tables
from dsbs_jax.report.results import SWEEP_FILE, RunResult, read_results

TABLE_FILE = "table.md"
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy.png"
_SELECTED_ON = {
    "best_validation": "direct-answer accuracy",
    "best_validation_loss": "gold-answer loss",
}


def read_sweep_info(out_dir: str) -> dict[str, Any]:
    """OUT/sweep.json ({} if absent)."""
    path = os.path.join(out_dir, SWEEP_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tables_markdown(results: list[RunResult], split: str = "test") -> str:
    """The accuracy tables (direct answer; rationale-then-answer when scored), in markdown."""
    parts = []
    for metric, label in tables.METRICS.items():
        table = tables.markdown_table(results, metric)
        if table:
            parts.append(
                f"{split.capitalize()} accuracy (%), {label}, mean ± standard error over "
                f"seeds:\n\n{table}"
            )
    return "\n\n".join(parts) + "\n"


def timing_markdown(results: list[RunResult]) -> str:
    """Mean seconds per run by method, for each part of a run's time the results record."""
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.timing if k not in keys]
    head = ["method", "runs", "total s", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_method: dict[str, list[RunResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    for m in tables.method_order(by_method):
        rs = by_method[m]
        row = [m, str(len(rs)), f"{statistics.mean(r.seconds for r in rs):.1f}"]
        for k in keys:
            vals = [r.timing[k] for r in rs if r.timing.get(k) is not None]
            row.append(f"{statistics.mean(vals):.1f}" if vals else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str) -> dict[str, str]:
    """Writes the table, the plot and the report; returns their paths."""
    out_dir = os.path.abspath(out_dir)
    results = sorted(read_results(out_dir), key=lambda r: (r.method, r.train_examples, r.seed))
    if not results:
        raise UserError(f"{out_dir}: no finished runs (no results.jsonl lines)")
    info = read_sweep_info(out_dir)
    core = info.get("core", {})
    task = core.get("task", "?")
    teacher = info.get("teacher_test_accuracy")
    split = core.get("score_split", "test")
    table = tables_markdown(results, split)
    separation = tables.separation_markdown(results)
    paths = {"table": os.path.join(out_dir, TABLE_FILE)}
    with atomic.open_atomic(paths["table"]) as f:
        f.write(table)
    png = plots.plot_accuracy(
        results,
        os.path.join(out_dir, PLOT_FILE),
        title=f"{task}: {split} accuracy against training examples",
        teacher_accuracy=teacher,
    )
    if png:
        paths["plot"] = png
    mc = info.get("model_config", {})
    settings = [
        f"- task `{task}`, training set {info.get('train_size', '?')} examples, "
        f"scored on {split}: {info.get('test_examples', '?')} examples (gold labels)",
        f"- model `{core.get('model')}`: d_model {mc.get('emb_dim')}, "
        f"{mc.get('num_encoder_layers')}+{mc.get('num_decoder_layers')} layers, "
        f"{mc.get('num_heads')} heads, mlp {mc.get('mlp_dim')}, tied embeddings "
        f"{mc.get('logits_via_embedding')}",
        f"- budget per run: {core.get('steps')} steps of {core.get('batch_size')} inputs "
        f"(dsbs: each input as label and rationale; distill_matched: twice the steps), AdamW, "
        f"learning rate {core.get('learning_rate')} (warmup {core.get('warmup_steps')}, cosine), "
        f"lengths {core.get('lengths')}",
        f"- seeds from {core.get('seed')}; alpha {core.get('alpha')}; scored parameters: "
        f"{core.get('select', 'last')}"
        + (
            f" ({_SELECTED_ON[core['select']]} on validation every {core.get('select_every')} steps)"
            if core.get("select") in _SELECTED_ON
            else " step's"
        ),
    ]
    if teacher is not None:
        settings.append(f"- teacher accuracy on the same {split} examples: {teacher:.1f}%")
    lengths = core.get("lengths") or {}
    gold_task = mixture_or_task_name(task, "gold_label")
    settings.append(
        "- a run's number is `dsbs eval` on its last checkpoint (the same evaluator): "
        f"`dsbs eval --gin_file={info.get('model_gin')} --gin_file=runs/eval.gin "
        "--gin.CHECKPOINT_PATH=\"'runs/<method>/<fraction>/<seed>/checkpoint_<steps>'\" "
        f"--gin.MIXTURE_OR_TASK_NAME=\"'{gold_task}'\" --gin.EVAL_SPLIT=\"'{split}'\" "
        f"--gin.TASK_FEATURE_LENGTHS=\"{{'inputs': {lengths.get('inputs')}, "
        f"'targets': {lengths.get('labels')}}}\" --gin.EVAL_EXAMPLES={info.get('test_examples')}"
        + (f" --gin.VOCABULARY_PATH=\"'{core['vocabulary']}'\"" if core.get("vocabulary") else "")
        + " --tfds_data_dir=DATA_DIR`"
        + (" (with --select last)" if core.get("select", "last") != "last" else "")
    )
    report = [
        f"# Sweep report: {task}",
        "",
        *settings,
        "",
        table,
        *(
            [
                "Distilling step-by-step against each method, direct answer (points; in "
                "standard errors of the difference):",
                "",
                separation,
                "",
            ]
            if separation
            else []
        ),
        f"![accuracy]({PLOT_FILE})" if png else "",
        "",
        "Mean seconds per run:",
        "",
        timing_markdown(results),
        f"Runs: {len(results)}; each run's MODEL_DIR (TensorBoard logs under train/ and eval/, "
        "test predictions) is under runs/<method>/<fraction>/<seed>.",
        "",
    ]
    paths["report"] = os.path.join(out_dir, REPORT_FILE)
    with atomic.open_atomic(paths["report"]) as f:
        f.write("\n".join(report))
    return paths
