"""The report's figures (matplotlib, files only): Δ histograms, method-vs-KD scatters,
training loss against cumulative FLOPs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Files only; no display on servers.
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from trainer.report.compare import pair_values  # noqa: E402
from trainer.report.rundirs import METHODS, Run  # noqa: E402


def plot_improvements(method: str, pairs: list[tuple[Run, Run]], out_dir: str) -> tuple[str, str]:
    """Histogram of KD log-ppl − method log-ppl, and method-vs-KD scatter (each pair on its
    common rows); returns PNG names."""
    values = pair_values(pairs)
    deltas = [k - m for m, k in values]
    hist = f"improvement_{method}.png"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(deltas, bins=max(5, min(30, len(deltas))), color="tab:blue", edgecolor="black")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(f"KD log-ppl − {method.upper()} log-ppl (>0: {method.upper()} better)")
    ax.set_ylabel("pairs of runs")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{method.upper()} vs KD at shared hyper-parameters")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, hist), dpi=120)
    plt.close(fig)
    scatter = f"scatter_{method}_vs_kd.png"
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    xs, ys = [k for _, k in values], [m for m, _ in values]
    ax.scatter(xs, ys, color="tab:orange", edgecolor="black", zorder=3)
    lo, hi = min(xs + ys), max(xs + ys)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", linewidth=1, label="y = x")
    ax.set_xlabel("KD held-out log-ppl")
    ax.set_ylabel(f"{method.upper()} held-out log-ppl")
    ax.set_title(f"{method.upper()} vs KD (below the line: {method.upper()} better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, scatter), dpi=120)
    plt.close(fig)
    return hist, scatter


def plot_curves(runs: Sequence[Run], out_dir: str) -> str | None:
    """Training loss against cumulative FLOPs, one line per run, colour per method."""
    runs = [r for r in runs if r.curve]
    if not runs:
        return None
    colors = dict(
        zip(METHODS, ("tab:gray", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange"))
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = set()
    for run in runs:
        xs, ys = zip(*run.curve)
        label = f"{run.method.upper()} ({run.curve_key})" if run.method not in labelled else None
        labelled.add(run.method)
        ax.plot(xs, ys, color=colors[run.method], alpha=0.7, linewidth=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs")
    keys = sorted({r.curve_key or "" for r in runs})  # Set for every run with a curve.
    ax.set_ylabel(f"training {' / '.join(keys)} (metrics.jsonl)")
    ax.set_title("Loss against compute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_vs_flops.png"), dpi=120)
    plt.close(fig)
    return "loss_vs_flops.png"
