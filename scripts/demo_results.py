"""The demo's numbers: per-method seeds, downstream errors with standard errors, results.json.

Everything is read back from what the stages wrote (RUN_DIR/config.json,
eval.json, metrics.jsonl, objective_penalty.json, OUT/facts.json); nothing is
typed in. ``demo_report`` turns these into report.md and plots.

    results = collect(ctx)            # {"methods": {...}, "downstream": {...}, ...}
    write_results_json(ctx, results)  # OUT/results.json
"""

from __future__ import annotations

import json
import math
import os

from trainer.training import eval_results
from trainer.training.metrics import read_metrics

# Rows of the report, in order: the teacher, then the student arms (scripts/demo_stages.ARMS).
METHOD_ROWS = ("teacher", "nll", "kd", "kd_topk", "hldc", "hldf")
TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")
# Error rate of guessing, per task: HellaSwag 4 endings, PIQA 2 solutions,
# ARC-Easy mostly 4 options (a few have 3 or 5), WinoGrande 2 options;
# LAMBADA is greedy generation of the last word (guessing ~never hits).
CHANCE_ERROR = {"hellaswag": 0.75, "piqa": 0.5, "arc_easy": 0.75, "winogrande": 0.5, "lambada": 1.0}


def _json_or_none(path: str):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_run(ctx, name: str) -> dict:
    """One run directory: config, eval tasks, FLOPs, tokens, steps, throughput, penalty,
    the hidden term's share (HLDC/HLDF: RUN_DIR/hidden_share.json) and wall time
    (final.json; None for runs from before it was recorded)."""
    run_dir = ctx.path("runs", name)
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "eval.json"), encoding="utf-8") as f:
        ev = eval_results.normalize(json.load(f))  # any eval.json version
    penalty_path = os.path.join(run_dir, "objective_penalty.json")
    penalty = None
    if os.path.exists(penalty_path):
        with open(penalty_path, encoding="utf-8") as f:
            penalty = json.load(f)
    records = read_metrics(run_dir)
    last = records[-1] if records else {}
    speeds = sorted(m["tokens_per_s"] for m in records if m.get("tokens_per_s"))
    final = _json_or_none(os.path.join(run_dir, "final.json")) or {}
    return {
        "name": name,
        "config": config,
        "eval": ev["tasks"],
        "scores": ev["scores"],
        "hidden_share": _json_or_none(os.path.join(run_dir, "hidden_share.json")),
        "wall_s": final.get("wall_s"),
        "flops": last.get("cumulative_flops", float("nan")),
        "tokens": last.get("tokens", float("nan")),
        "steps": last.get("step", 0),
        # The median logged rate: the first interval includes compilation.
        "tokens_per_s": speeds[len(speeds) // 2] if speeds else float("nan"),
        "penalty": penalty,
    }


def standard_error(error: float, n: int) -> float:
    """Binomial standard error of an error rate measured on n examples."""
    return math.sqrt(max(error * (1 - error), 0.0) / n) if n else float("nan")


def downstream_cell(task: str, result: dict) -> dict:
    """{"error", "n", "se", "near_chance", "worse_than_chance"} (2 s.e. of chance)."""
    err, n = float(result["error"]), int(result["n"])
    se = standard_error(err, n)
    # At least the s.e. of a coin at chance, so an error of exactly 1.0 (s.e. 0) is flagged.
    se_test = max(se, standard_error(CHANCE_ERROR[task], n))
    return {
        "error": err,
        "n": n,
        "se": se,
        "near_chance": abs(err - CHANCE_ERROR[task]) <= 2 * se_test,
        "worse_than_chance": err - CHANCE_ERROR[task] > 2 * se_test,
    }


def shared_scores(runs: dict, task: str) -> dict | None:
    """{run name: its score of `task`} on the row set every run was scored on (the largest
    such), or None when the runs share no row set (they must not be compared)."""
    common = None
    for run in runs.values():
        keys = {eval_results.row_key(s): s.get("n") or 0 for s in run["scores"].get(task, [])}
        common = keys if common is None else {k: n for k, n in common.items() if k in keys}
    if not common:
        return None
    key = max(common, key=common.get)
    return {
        name: next(s for s in run["scores"][task] if eval_results.row_key(s) == key)
        for name, run in runs.items()
    }


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def read_marker(path: str) -> dict:
    """A stage's OUT/.done marker: {"wall_s", "load_avg_1m"} (None where it does not say).

    scripts.demo writes JSON; markers of demos from before hold a bare number of
    seconds (or nothing), and still resume and report what they hold.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        marker = json.loads(text) if text else {}
    except json.JSONDecodeError:  # Not JSON: a marker from before, written by hand or empty.
        marker = {}
    if isinstance(marker, (int, float)):  # The old format: the stage's seconds.
        marker = {"wall_s": float(marker)}
    return {"wall_s": marker.get("wall_s"), "load_avg_1m": marker.get("load_avg_1m")}


def stage_times(ctx, stages) -> dict:
    """{stage: read_marker(...)} for the finished stages among `stages`, in that order."""
    markers = {name: ctx.path(".done", name) for name in stages}
    return {name: read_marker(p) for name, p in markers.items() if os.path.exists(p)}


def collect(ctx, student_runs, stages=()) -> dict:
    """All the demo's numbers.

    Args:
        ctx: demo_stages.Context.
        student_runs: [(run name, method, seed)] as demo_stages.student_runs gives.
        stages: the demo's stage names, in order (their wall times come from OUT/.done).

    Returns:
        {"runs": {name: run}, "methods": {method: {"runs", "log_ppl", "mean",
         "spread"}}, "downstream": {task: {"chance", method: [cells]}},
         "facts": facts.json, "stages": stage_times(ctx, stages)}.
    """
    names = ["teacher"] + [r[0] for r in student_runs]
    runs = {name: load_run(ctx, name) for name in names}
    members = {"teacher": ["teacher"]}
    for name, method, _ in student_runs:
        members.setdefault(method, []).append(name)
    heldout = shared_scores(runs, "heldout")
    if heldout is None:
        raise ValueError(
            "the demo's runs were scored on different held-out rows (see each run's "
            "eval.json 'scores'); re-run the evaluate stage on the held-out store "
            "without --limit"
        )
    methods = {}
    for method in METHOD_ROWS:
        if method not in members:
            continue
        ppl = [heldout[n]["log_ppl"] for n in members[method]]
        methods[method] = {
            "runs": members[method],
            "log_ppl": ppl,
            "mean": sum(ppl) / len(ppl),
            "spread": _spread(ppl),
        }
    downstream = {}
    for task in TASKS:
        scores = shared_scores(runs, task)  # only tasks every run has on the same examples
        if scores is None:
            continue
        downstream[task] = {"chance": CHANCE_ERROR[task]}
        for method, m in methods.items():
            downstream[task][method] = [downstream_cell(task, scores[n]) for n in m["runs"]]
    facts_path = ctx.path("facts.json")
    facts = {}
    if os.path.exists(facts_path):
        with open(facts_path, encoding="utf-8") as f:
            facts = json.load(f)
    return {
        "runs": runs,
        "methods": methods,
        "downstream": downstream,
        "facts": facts,
        "stages": stage_times(ctx, stages),
    }


def below_chance_everywhere(downstream: dict) -> list[str]:
    """Tasks on which every model, the teacher included, scores worse than chance.

    At this scale that is a property of the task's scoring (e.g. a length or
    frequency bias of the log-likelihood comparison that every model shares),
    not a finding about any method: the report says so once per task.
    """
    return [
        task
        for task, row in downstream.items()
        if all(c["worse_than_chance"] for m, cells in row.items() if m != "chance" for c in cells)
    ]


def signal_comparison(methods: dict) -> dict | None:
    """KD from the sampled signal vs KD from top-k, seed by seed (None without both arms).

    Returns:
        {"sampled": [log-ppl per seed], "topk": [...], "delta": mean(sampled) - mean(topk),
         "paired": [per-seed sampled - topk], "bar": the larger seed spread,
         "beyond_spread": |delta| > bar}.
    """
    if "kd" not in methods or "kd_topk" not in methods:
        return None
    s, t = methods["kd"], methods["kd_topk"]
    delta = s["mean"] - t["mean"]
    bar = max(s["spread"], t["spread"])
    return {
        "sampled": s["log_ppl"],
        "topk": t["log_ppl"],
        "delta": delta,
        "paired": [a - b for a, b in zip(s["log_ppl"], t["log_ppl"])],
        "bar": bar,
        "beyond_spread": bool(len(s["log_ppl"]) > 1 and len(t["log_ppl"]) > 1 and abs(delta) > bar),
    }


def hidden_shares(results: dict) -> dict:
    """{run: its hidden_share.json} for the runs that have one (HLDC, HLDF)."""
    return {name: r["hidden_share"] for name, r in results["runs"].items() if r["hidden_share"]}


def verdict(methods: dict) -> dict:
    """KD vs NLL: the gap and whether it exceeds twice the larger seed spread."""
    kd, nll = methods["kd"], methods["nll"]
    gap = nll["mean"] - kd["mean"]
    bar = 2 * max(kd["spread"], nll["spread"])
    seeds_ok = len(kd["log_ppl"]) > 1 and len(nll["log_ppl"]) > 1
    return {
        "kd_gain_over_nll": gap,
        "twice_larger_seed_spread": bar,
        "kd_beats_nll_beyond_spread": bool(seeds_ok and gap > bar),
    }


def write_results_json(ctx, results: dict) -> str:
    """OUT/results.json: the numbers the issue asks for, plus what explains them."""
    methods, facts = results["methods"], results["facts"]
    coverage = facts.get("store_stats", {}).get("topk", {}).get("coverage", {}).get("mean")
    penalties = dict(facts.get("objective_penalty", {}))
    penalties["runs"] = {
        name: (r["penalty"] or {}).get("penalty_nats")
        for name, r in results["runs"].items()
        if r["penalty"] is not None
    }
    out = {
        "heldout_log_ppl": {m: v["log_ppl"] for m, v in methods.items()},
        "heldout_log_ppl_mean": {m: v["mean"] for m, v in methods.items()},
        "heldout_log_ppl_spread": {m: v["spread"] for m, v in methods.items()},
        "heldout_rows": results["runs"]["teacher"]["eval"]["heldout"].get("n"),
        "delta_vs_nll": {m: v["mean"] - methods["nll"]["mean"] for m, v in methods.items()},
        "objective_penalty": penalties,
        "topk_mass_coverage": coverage,
        "kd_sampled_vs_topk": signal_comparison(methods),
        "hidden_share": hidden_shares(results),
        "below_chance_for_every_model": below_chance_everywhere(results["downstream"]),
        "wall_s": {name: r["wall_s"] for name, r in results["runs"].items()},
        "stages": results["stages"],
        "student_flops_budget": ctx.size.student_budget,
        "downstream": results["downstream"],
        **verdict(methods),
    }
    path = ctx.path("results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    return path
