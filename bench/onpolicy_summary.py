"""Summary and markdown tables of bench/onpolicy_compare.py (JAX-free, so tested in seconds).

`summarise(pieces, rows)` turns the recorded pieces (the bench's JSON) into per-row
means and seed spreads, each row's Δ vs the default (stored KD, sampled logits),
and the costs; `markdown(summary)` prints them. A Δ counts as "beyond noise"
only when it is larger than the larger of the two rows' seed spreads (max −
min over seeds), as the teacher ladder's; with one seed nothing is.
"""

from __future__ import annotations

import os
import subprocess

BASELINE = "kd_sampled"
LABELS = {
    "teacher": "teacher (reference)",
    "phase1": "phase 1 alone: KD sampled, ½ budget (reference)",
    "demo_kd": "KD sampled, one run of the whole budget (the demo's; reference)",
    "kd_sampled": "KD, 12 sampled logits, stored (the default)",
    "kd_topk": "KD, top-k, stored",
    "kd_live": "KD, live teacher, full vocabulary",
    "opd_live": "OPD, live (exact reverse KL)",
    "oprd_live": "OPRD, live (hidden MSE)",
    "oprd_opd_live": "OPRD + OPD (β=1), live",
    "oprd_store": "OPRD, store rounds (generate → dump → train)",
}
TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")
STAGES = ("rollouts", "scored", "run")


def git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "values": values,
        "mean": sum(values) / len(values),
        "spread": max(values) - min(values),
    }


def _cell(pieces: list[dict], phase1: dict) -> dict:
    """One row's per-seed numbers (pieces sorted by seed) and their means."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {
        "seeds": [p.get("seed") for p in pieces],
        "log_ppl": _stats([p["log_ppl"] for p in pieces]),
        "log_ppl_se": mean([p.get("log_ppl_se") or 0.0 for p in pieces]),
        "teacher_nll": _stats([p["samples"]["teacher_nll"] for p in pieces]),
        "student_nll": _stats([p["samples"]["student_nll"] for p in pieces]),
        "reverse_kl": _stats([p["samples"]["reverse_kl"] for p in pieces]),
        "sample_se": mean([p["samples"].get("teacher_nll_se") or 0.0 for p in pieces]),
        "sample_rows": pieces[0]["samples"]["n"],
        "wall_s": [p.get("wall_s") for p in pieces],
    }
    for cost in ("student_flops", "teacher_flops", "generation_flops"):
        values = [p.get(cost, 0.0) for p in pieces]
        if cost == "student_flops" and pieces[0].get("kind") == "row":
            values = [v + phase1.get(p["seed"], 0.0) for v, p in zip(values, pieces)]
        out[cost] = mean(values)
    down = {}
    for task in TASKS:
        scores = [p["downstream"][task] for p in pieces if task in p.get("downstream", {})]
        if len(scores) == len(pieces):
            se = [s["acc_se"] or 0.0 for s in scores]
            down[task] = {
                "acc": mean([s["acc"] for s in scores]),
                "se": mean(se),  # One run's SE (n examples); seeds score the same examples.
                "n": scores[0]["n"],
            }
    out["downstream"] = down
    walls = [p["stage_wall_s"] for p in pieces if "stage_wall_s" in p]
    if walls:
        total = {s: sum(w.get(s, 0.0) for w in walls) for s in STAGES}
        whole = sum(total.values()) or 1.0
        out["stage_share"] = {s: total[s] / whole for s in STAGES}
    return out


def summarise(pieces: dict, rows: list[str]) -> dict:
    """Per row (and the references): stats over seeds, Δ vs the default, costs.

    Args:
        pieces: {key: the bench's piece result}, possibly partial.
        rows: the bench's rows, in table order.

    Returns:
        {"rows": {name: cell | None}, "teacher" / "phase1" / "demo_kd": cell | None,
         "winner": {"row", "beyond_noise", "margin"} | None}; a row's cell has
        "delta" (vs BASELINE's mean log-ppl) and "beyond_noise" when both have seeds.
    """
    by_kind: dict[str, list[dict]] = {}
    for p in pieces.values():
        name = p.get("row") or p["kind"]
        by_kind.setdefault(name, []).append(p)
    for group in by_kind.values():
        group.sort(key=lambda p: p.get("seed") or 0)
    phase1 = {p["seed"]: p["student_flops"] for p in by_kind.get("phase1", [])}
    cells = {n: _cell(by_kind[n], phase1) if n in by_kind else None for n in rows}
    base = cells.get(BASELINE)
    for name, cell in cells.items():
        if cell is None or base is None or name == BASELINE:
            continue
        cell["delta"] = cell["log_ppl"]["mean"] - base["log_ppl"]["mean"]
        two = len(cell["log_ppl"]["values"]) > 1 and len(base["log_ppl"]["values"]) > 1
        noise = max(cell["log_ppl"]["spread"], base["log_ppl"]["spread"])
        cell["beyond_noise"] = two and abs(cell["delta"]) > noise
    done = {n: c["log_ppl"] for n, c in cells.items() if c}
    ranked = sorted((stats["mean"], n) for n, stats in done.items())
    winner = None
    if ranked:
        name = ranked[0][1]
        best = done[name]
        runner = done[ranked[1][1]] if len(ranked) > 1 else None
        margin = runner["mean"] - best["mean"] if runner else None
        seeds = len(best["values"]) > 1 and runner is not None and len(runner["values"]) > 1
        winner = {
            "row": name,
            "runner_up": ranked[1][1] if runner else None,
            "margin": margin,
            "beyond_noise": bool(
                seeds
                and runner is not None
                and margin is not None
                and margin > max(best["spread"], runner["spread"])
            ),
        }
    return {
        "rows": cells,
        "teacher": _cell(by_kind["teacher"], phase1) if "teacher" in by_kind else None,
        "phase1": _cell(by_kind["phase1"], phase1) if "phase1" in by_kind else None,
        "demo_kd": _cell(by_kind["demo_kd"], phase1) if "demo_kd" in by_kind else None,
        "winner": winner,
    }


def _seeds(stats: dict | None) -> str:
    return "–" if stats is None else " / ".join(f"{v:.4f}" for v in stats["values"])


def _flops(x: float) -> str:
    return f"{x:.2e}" if x else "0"


def markdown(summary: dict) -> str:
    """Three tables (quality, downstream, costs) and the verdict lines."""
    named = [(n, summary.get(n)) for n in ("teacher", "phase1")]
    named += [("demo_kd", summary["demo_kd"])] if summary.get("demo_kd") else []
    named += list(summary["rows"].items())
    md = [
        "| student | held-out log-ppl (per seed) | Δ vs KD sampled | teacher NLL of its samples "
        "| its own NLL of them | reverse KL (teacher − own) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in named:
        if c is None:
            md.append(f"| {LABELS.get(name, name)} | – | | | | |")
            continue
        delta = ""
        if "delta" in c:
            delta = f"{c['delta']:+.4f}{'*' if c['beyond_noise'] else ''}"
        md.append(
            f"| {LABELS.get(name, name)} | {_seeds(c['log_ppl'])} | {delta} "
            f"| {_seeds(c['teacher_nll'])} | {_seeds(c['student_nll'])} | {_seeds(c['reverse_kl'])} |"
        )
    ses = [c for _, c in named if c]
    if ses:
        md.append(
            f"\nHeld-out SE per model ~{ses[-1]['log_ppl_se']:.4f} (rows as units; the same rows "
            f"for every model, so differences between models are far tighter); samples: "
            f"{ses[-1]['sample_rows']} held-out prompts, SE of the teacher NLL ~{ses[-1]['sample_se']:.4f}. "
            f"`*`: beyond the larger seed spread."
        )
    tasks = [t for t in TASKS if any(t in (c or {}).get("downstream", {}) for _, c in named)]
    if tasks:
        md += ["", "| student | " + " | ".join(f"{t} acc ± SE" for t in tasks) + " |"]
        md.append("|---|" + "---|" * len(tasks))
        for name, c in named:
            if c is None or not c["downstream"]:
                continue
            cells = [
                f"{c['downstream'][t]['acc']:.3f} ± {c['downstream'][t]['se']:.3f}"
                if t in c["downstream"]
                else "–"
                for t in tasks
            ]
            md.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
        n = next(iter(next(c for _, c in named if c and c["downstream"])["downstream"].values()))[
            "n"
        ]
        md.append(f"\nn = {n} examples per task; accuracy is the mean over seeds, SE one run's.")
    md += [
        "",
        "| student | student FLOPs (charged) | teacher FLOPs (not charged) "
        "| generation FLOPs (not charged) | wall s per seed (phase 2 + eval) |",
        "|---|---|---|---|---|",
    ]
    for name, c in summary["rows"].items():
        if c is None:
            continue
        walls = " / ".join(f"{w:.0f}" for w in c["wall_s"] if w is not None)
        md.append(
            f"| {LABELS.get(name, name)} | {_flops(c['student_flops'])} | "
            f"{_flops(c['teacher_flops'])} | {_flops(c['generation_flops'])} | {walls} |"
        )
    store = (summary["rows"].get("oprd_store") or {}).get("stage_share")
    if store:
        md.append(
            f"\nOPRD store rounds, share of a round's wall time: generation "
            f"{store['rollouts']:.0%}, scoring (the dump) {store['scored']:.0%}, training "
            f"{store['run']:.0%}."
        )
    w = summary["winner"]
    if w:
        verdict = "beyond" if w["beyond_noise"] else "within"
        margin = (
            "" if w["margin"] is None else f" by {w['margin']:.4f} nats, {verdict} the seed spread"
        )
        md.append(
            f"\nLowest held-out log-ppl: {LABELS.get(w['row'], w['row'])}"
            f"{margin} (next: {LABELS.get(w['runner_up'], w['runner_up'])})."
        )
    return "\n".join(md)
