"""Data-efficiency plots: test accuracy against training examples, one line per method."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dsbs_jax.report.results import RunResult
from dsbs_jax.report.tables import METHOD_NAMES, METRICS, aggregate, method_order

_STYLE = {
    "finetune": ("tab:blue", "o"),
    "distill": ("tab:orange", "s"),
    "distill_matched": ("tab:brown", "v"),
    "dsbs": ("tab:red", "D"),
}


def plot_accuracy(
    results: Sequence[RunResult],
    out_path: str | os.PathLike,
    title: str = "",
    teacher_accuracy: float | None = None,
) -> str | None:
    """Writes a PNG (one panel per scored metric); returns its path, or None with no results.

    Points are the mean over seeds, error bars one standard error; the x axis is the number of
    training examples (log scale); a dashed line marks the teacher's accuracy on the test set.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, label) for k, label in METRICS.items() if aggregate(results, k)]
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False, sharey=True
    )
    for ax, (metric, label) in zip(axes[0], panels):
        cells = aggregate(results, metric)
        for m in method_order(cells):
            sizes = sorted(cells[m])
            means = [cells[m][n].mean for n in sizes]
            errs = [cells[m][n].stderr or 0.0 for n in sizes]
            color, marker = _STYLE.get(m, (None, "x"))
            ax.errorbar(
                sizes,
                means,
                yerr=errs,
                label=METHOD_NAMES.get(m, m),
                color=color,
                marker=marker,
                markersize=4,
                capsize=3,
                linewidth=1.5,
            )
        if teacher_accuracy is not None:
            ax.axhline(teacher_accuracy, color="gray", linestyle="--", linewidth=1)
            ax.annotate(
                f"teacher {teacher_accuracy:.1f}%",
                (0.01, teacher_accuracy),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(0, -10),
                fontsize=8,
                color="gray",
            )
        all_sizes = sorted({n for by_n in cells.values() for n in by_n})
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_sizes)
        ax.set_xticklabels([str(n) for n in all_sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="best")  # the first panel has every method
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out_path


def plot_loss_curve(
    metrics_path: str | os.PathLike, out_path: str | os.PathLike, title: str = ""
) -> str:
    """Writes a PNG of a run's train loss against its step (from MODEL_DIR/train/metrics.jsonl,
    the last line of each step where a resumed run wrote it twice); returns its path."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss: dict[int, float] = {}
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                loss[int(row["step"])] = float(row["loss"])
    steps = sorted(loss)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(steps, [loss[s] for s in steps], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss per target token")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return os.fspath(out_path)
