"""Sweep comparison report: the paper's views from run directories.

    python -m trainer.report RUN_DIR [RUN_DIR ...] --out DIR

Reads RUN_DIR/config.json, metrics.jsonl and eval.json (a directory holding run
directories is expanded) and writes DIR/report.md plus PNGs:

* best setting per method by held-out log-perplexity (mean over seeds), with
  the task errors (the paper's Table 2);
* pointwise improvement over KD at shared settings: KD log-ppl minus the
  method's, for each pair of runs agreeing on every config field that differs
  between the runs and both methods read: η, τ, α, γ, p1, but also tail, k,
  seed, divergence, α schedule (histograms, Figures 2-4);
* scatter of each method's log-ppl against KD's for those pairs (Figures 5-7);
* training loss against cumulative FLOPs (compute-matched comparison).

Runs are compared only within one (model, budget) group, and scores only on
equal row sets (eval.json records a digest of the rows each score was computed
on, see trainer/training/eval_results.py): a pair scored on different rows gets
no Δ (the table counts it as refused), a run whose held-out score is over other
rows than its method's other runs is not ranked, and a table column whose
scores come from different row sets marks each cell with its set ([A], [B]).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; no display on servers.
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from trainer.training import config as config_lib  # noqa: E402
from trainer.training import eval_results, metrics

# --- The one mapping from trainer config.json (trainer/configs/base.py) to report names.
METHOD_KEY = "method"
GROUP_KEYS = {"model": "model.name", "budget": "budget.value", "budget_unit": "budget.unit"}
# Every other config field that differs between the runs given is a setting the runs are
# told apart, paired and selected by (η, τ, α, γ, p1, but also tail, k, seed, divergence,
# α schedule, ...), except bookkeeping that cannot change the result:
BOOKKEEPING_KEYS = (
    "run_dir",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "peak_flops_per_device",
    "distributed",
    "store.allow_partial",
    "data.num_threads",
    "data.prefetch_buffer_size",
    "data.num_workers",
    "loss.token_tile",
)
BOOKKEEPING_PREFIXES = ("debug.", "mesh.")
# Fields a method never reads (prefix match): a difference there does not split its runs.
# (A kd run's teacher.checkpoint, live_topk, charge_flops do matter: a live teacher.)
_STORED_LAYER = ("teacher.hidden_layer", "teacher.d_model", "student_layer")
INERT = {
    "nll": ("loss.", "hldf.", "teacher.", "student_layer", "data.k", "data.samples", "onpolicy."),
    "kd": ("loss.gamma", "hldf.", *_STORED_LAYER, "onpolicy."),
    "hldc": ("hldf.", "onpolicy."),
    "hldf": ("loss.gamma", "onpolicy."),
    "opd": ("loss.gamma", "hldf.", *_STORED_LAYER, "onpolicy.opd_weight"),
    "oprd": ("loss.gamma", "hldf."),
}
METHODS = tuple(INERT)  # The methods the report knows, in table order.
SEED_KEY = "seed"
# Short names in tables; any other differing field shows as its dotted key.
SHORT_NAMES = {
    "optim.lr": "lr",
    "loss.tau": "tau",
    "loss.alpha": "alpha",
    "loss.gamma": "gamma",
    "hldf.p1": "p1",
    "loss.tail": "tail",
    "loss.divergence": "divergence",
    "loss.alpha_schedule": "alpha_schedule",
    "data.k": "k",
}
REFERENCE_METHOD = "kd"
# metrics.jsonl: x axis and the loss plotted (first key present wins).
FLOPS_KEY = "cumulative_flops"
CURVE_KEYS = ("nll", "loss")
# eval.json metrics shown in the tables.
PPL_TASKS = ("heldout", "docs")
ERROR_TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")


class ReportError(ValueError):
    """No usable run directories, or a run directory that is not one."""


@dataclasses.dataclass
class Run:
    name: str
    path: str
    method: str
    group: tuple
    hparams: dict[str, Any]
    eval: dict[str, dict]
    curve: list[tuple[float, float]]
    curve_key: str | None
    config: dict = dataclasses.field(default_factory=dict)
    seed_ppls: list = dataclasses.field(default_factory=list)  # set by best_per_method
    scores: dict = dataclasses.field(default_factory=dict)  # eval.json "scores": every row set

    @property
    def ppl_task(self) -> str | None:
        """The log-perplexity task runs are ranked by (heldout, else docs)."""
        return next((t for t in PPL_TASKS if "log_ppl" in self.eval.get(t, {})), None)

    @property
    def log_ppl(self) -> float | None:
        task = self.ppl_task
        return float(self.eval[task]["log_ppl"]) if task else None

    @property
    def ppl_rows(self) -> tuple | None:
        """The row set of the headline log-ppl (eval_results.row_key)."""
        task = self.ppl_task
        return (task,) + eval_results.row_key(self.eval[task]) if task else None


def _lookup(config: dict, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{path} is not valid JSON ({e}); re-run the step that writes {what}"
        ) from None


def expand_run_dirs(paths: Sequence[str]) -> list[str]:
    """Run directories among `paths`; a directory of run directories is expanded."""
    if not paths:
        raise ReportError("no run directories given; pass RUN_DIR... written by python -m trainer")
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(
                f"run directory {path!r} does not exist; pass directories "
                f"written by python -m trainer"
            )
        if os.path.exists(os.path.join(path, "config.json")):
            runs.append(path)
            continue
        children = sorted(
            os.path.join(path, c)
            for c in os.listdir(path)
            if os.path.exists(os.path.join(path, c, "config.json"))
        )
        if not children:
            raise ReportError(
                f"{path!r} holds no config.json (empty or not a run directory); "
                f"pass run directories written by python -m trainer"
            )
        runs += children
    return runs


def load_run(path: str) -> Run:
    """Reads one run directory (eval.json and metrics.jsonl are optional)."""
    config = _read_json(os.path.join(path, "config.json"), "config.json (python -m trainer)")
    method = str(_lookup(config, METHOD_KEY) or "").lower()
    if method not in METHODS:
        raise ReportError(
            f"{path}/config.json has method={method!r}; expected one of "
            f"{sorted(METHODS)}: pass trainer run directories"
        )
    hparams = {}  # Filled by load_runs: which fields differ depends on all the runs.
    group = tuple(_lookup(config, key) for key in GROUP_KEYS.values())
    eval_path = os.path.join(path, "eval.json")
    evals = (
        eval_results.normalize(_read_json(eval_path, "eval.json (python -m trainer.evaluate)"))
        if os.path.exists(eval_path)
        else {}
    )
    curve, curve_key = [], None
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
        records = metrics.read_metrics(path)  # one record per step, resumes de-duplicated
        keys = [k for k in CURVE_KEYS if any(k in r for r in records)]
        if keys:
            curve_key = keys[0]
            curve = [
                (float(r[FLOPS_KEY]), float(r[curve_key]))
                for r in records
                if FLOPS_KEY in r and curve_key in r
            ]
    return Run(
        os.path.basename(os.path.normpath(path)),
        path,
        method,
        group,
        hparams,
        evals.get("tasks", {}),
        curve,
        curve_key,
        # A config.json older than a field reads as holding the value that
        # reproduces it, so old and new runs of one setting still pair.
        config={**config_lib.ADDED_FIELDS, **config_lib.flatten(config)},
        scores=evals.get("scores", {}),
    )


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config fields whose value differs between the runs (bookkeeping excluded)."""
    keys = sorted(set().union(*(r.config for r in runs))) if runs else []
    skip = set(BOOKKEEPING_KEYS) | set(GROUP_KEYS.values()) | {METHOD_KEY}
    return [
        k
        for k in keys
        if k not in skip
        and not k.startswith(BOOKKEEPING_PREFIXES)
        and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
    ]


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Loads run directories and sets each run's settings (the fields that differ)."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    keys = differing_keys(runs)
    for run in runs:
        names = {SHORT_NAMES.get(k, k): k for k in keys if not k.startswith(INERT[run.method])}
        run.hparams = {name: run.config.get(names[name]) for name in sorted(names)}
    return runs


def majority_rows(runs: Sequence[Run]) -> tuple | None:
    """The held-out row set most of `runs` were scored on (ties: the larger n)."""
    counts = collections.Counter(r.ppl_rows for r in runs if r.ppl_rows is not None)
    if not counts:
        return None
    n_of = {r.ppl_rows: r.eval[r.ppl_task].get("n") or 0 for r in runs if r.ppl_rows is not None}
    return max(counts, key=lambda k: (counts[k], n_of[k]))


def unranked(runs: Sequence[Run]) -> list[Run]:
    """Evaluated runs left out of the ranking: their held-out rows differ from their
    (group, method)'s majority row set."""
    by_method = collections.defaultdict(list)
    for run in runs:
        if run.log_ppl is not None:
            by_method[(run.group, run.method)].append(run)
    out = []
    for members in by_method.values():
        key = majority_rows(members)
        out += [r for r in members if r.ppl_rows != key]
    return out


def best_per_method(runs: Sequence[Run]) -> list[Run]:
    """Per (group, method), the evaluated setting with the lowest mean log-ppl over seeds.

    Runs that differ only in the seed are one setting: it is selected by its
    mean (never by its luckiest seed), and the returned run (its first seed)
    carries every seed's log-ppl in ``seed_ppls``. Only runs scored on the
    method's majority row set compete (see ``unranked``).
    """
    settings: dict[tuple, list[Run]] = collections.defaultdict(list)
    left_out = {id(r) for r in unranked(runs)}
    for run in runs:
        if run.log_ppl is None or id(run) in left_out:
            continue
        rest = json.dumps(
            {k: v for k, v in run.hparams.items() if k != SEED_KEY}, sort_keys=True, default=str
        )
        settings[(run.group, run.method, rest)].append(run)
    best: dict[tuple, list[Run]] = {}
    for (group, method, _), members in settings.items():
        mean = sum(r.log_ppl for r in members) / len(members)
        key = (group, method)
        if key not in best or mean < sum(r.log_ppl for r in best[key]) / len(best[key]):
            best[key] = members
    out = []
    for k in sorted(best, key=lambda k: (str(k[0]), list(METHODS).index(k[1]))):
        members = sorted(best[k], key=lambda r: str(r.hparams.get(SEED_KEY)))
        out.append(dataclasses.replace(members[0], seed_ppls=[r.log_ppl for r in members]))
    return out


def shared_setting_pairs(runs: Sequence[Run]) -> dict[str, list[tuple[Run, Run]]]:
    """Per method, (method run, KD run) pairs equal on every setting both read (seed too)."""
    kd_runs = [r for r in runs if r.method == REFERENCE_METHOD and r.log_ppl is not None]
    pairs = collections.defaultdict(list)
    for run in runs:
        if run.method == REFERENCE_METHOD or run.log_ppl is None:
            continue
        for kd in kd_runs:
            shared = set(run.hparams) & set(kd.hparams)
            if kd.group == run.group and all(_same(kd.hparams[h], run.hparams[h]) for h in shared):
                pairs[run.method].append((run, kd))
    return dict(pairs)


def pair_log_ppls(run: Run, kd: Run) -> tuple[float, float] | None:
    """(method log-ppl, KD log-ppl) on the same rows (the largest row set both were
    scored on, of the first log-ppl task both have), or None: no common rows."""
    for task in PPL_TASKS:
        found = eval_results.comparable(run.scores.get(task, []), kd.scores.get(task, []))
        if found and "log_ppl" in found[0] and "log_ppl" in found[1]:
            return float(found[0]["log_ppl"]), float(found[1]["log_ppl"])
    return None


def kd_pairs(runs: Sequence[Run]) -> dict[str, list[tuple[Run, Run]]]:
    """Per method, the shared-setting pairs scored on the same rows (Δ is defined)."""
    pairs = {
        m: [p for p in ps if pair_log_ppls(*p) is not None]
        for m, ps in shared_setting_pairs(runs).items()
    }
    return {m: ps for m, ps in pairs.items() if ps}


def refused_pairs(runs: Sequence[Run]) -> dict[str, list[tuple[Run, Run]]]:
    """Per method, the shared-setting pairs whose held-out scores are on different rows."""
    pairs = {
        m: [p for p in ps if pair_log_ppls(*p) is None]
        for m, ps in shared_setting_pairs(runs).items()
    }
    return {m: ps for m, ps in pairs.items() if ps}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _fmt(value, digits=4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def _error_delta(run: Run, kd: Run) -> float | None:
    """Mean over the tasks both runs were scored on with the same rows of (KD error −
    method error), in points."""
    deltas = []
    for task in ERROR_TASKS:
        found = eval_results.comparable(run.scores.get(task, []), kd.scores.get(task, []))
        if found and "error" in found[0] and "error" in found[1]:
            deltas.append(float(found[1]["error"]) - float(found[0]["error"]))
    return 100 * sum(deltas) / len(deltas) if deltas else None


def mean_error_tasks(runs: Sequence[Run]) -> list[str]:
    """The error tasks every run of a table with task errors was scored on, on the same
    rows: the set its "mean err %" column averages (never different task sets per row)."""
    runs = [r for r in runs if any("error" in r.eval.get(t, {}) for t in ERROR_TASKS)]
    return (
        [
            t
            for t in ERROR_TASKS
            if all("error" in r.eval.get(t, {}) for r in runs)
            and len({eval_results.row_key(r.eval[t]) for r in runs}) == 1
        ]
        if runs
        else []
    )


def _row_set_tags(runs: Sequence[Run]) -> tuple[dict, list[str]]:
    """{(run name, task): " [A]"} for columns whose scores come from different row sets,
    and the legend lines naming each set."""
    tags, legend = {}, []
    for task in PPL_TASKS + ERROR_TASKS:
        shown = [(r, r.eval[task]) for r in runs if task in r.eval]
        keys = list(dict.fromkeys(eval_results.row_key(s) for _, s in shown))
        if len(keys) < 2:
            continue
        letters = {k: chr(ord("A") + i) for i, k in enumerate(keys)}
        for run, score in shown:
            tags[(run.name, task)] = f" [{letters[eval_results.row_key(score)]}]"
        sets = {letters[eval_results.row_key(s)]: eval_results.describe(s) for _, s in shown}
        legend.append(
            f"{task} scored on different row sets, not comparable across them: "
            + "; ".join(f"[{k}] {v}" for k, v in sorted(sets.items()))
            + "."
        )
    return tags, legend


def _run_row(run: Run, mean_tasks: Sequence[str] = (), tags: dict | None = None) -> list[str]:
    tags = tags or {}
    errors = [run.eval.get(t, {}).get("error") for t in ERROR_TASKS]
    known = [float(run.eval[t]["error"]) for t in mean_tasks if "error" in run.eval.get(t, {})]
    mean = sum(known) / len(known) if known and len(known) == len(mean_tasks) else None
    hp = ", ".join(
        f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
        for k, v in run.hparams.items()
        if not (k == SEED_KEY and len(run.seed_ppls) > 1)
    )
    name = run.name
    if len(run.seed_ppls) > 1:
        ppls = run.seed_ppls
        name += (
            f" ({len(ppls)} seeds: mean {sum(ppls) / len(ppls):.4f}, "
            f"spread {max(ppls) - min(ppls):.4f})"
        )
    ppl_cells = [_fmt(run.eval.get(t, {}).get("log_ppl")) for t in PPL_TASKS]
    if len(run.seed_ppls) > 1:  # The setting's mean over seeds, as selected.
        first = next(i for i, t in enumerate(PPL_TASKS) if "log_ppl" in run.eval.get(t, {}))
        ppl_cells[first] = _fmt(sum(run.seed_ppls) / len(run.seed_ppls)) + " (mean)"
    ppl_cells = [c + tags.get((run.name, t), "") for c, t in zip(ppl_cells, PPL_TASKS)]
    error_cells = [
        "–" if e is None else f"{100 * float(e):.1f}" + tags.get((run.name, t), "")
        for e, t in zip(errors, ERROR_TASKS)
    ]
    return (
        [run.method.upper(), name, hp]
        + ppl_cells
        + error_cells
        + ["–" if mean is None else f"{100 * mean:.1f}"]
    )


def _table(runs: Sequence[Run]) -> str:
    """The runs' table; "mean err %" averages only the tasks every row shares on the same
    rows (named in its header), and a column mixing row sets tags its cells (legend below)."""
    mean_tasks = mean_error_tasks(runs)
    tags, legend = _row_set_tags(runs)
    mean_header = (
        f"mean err % ({', '.join(mean_tasks)})"
        if mean_tasks
        else "mean err % (no task shared by every row on the same rows)"
    )
    header = (
        ["method", "run", "hyper-parameters"]
        + [f"{t} log-ppl" for t in PPL_TASKS]
        + [f"{t} err %" for t in ERROR_TASKS]
        + [mean_header]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_run_row(r, mean_tasks, tags)) + " |" for r in runs]
    return "\n".join(lines + ([""] + legend if legend else []))


def _group_title(group: tuple) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
        for k, v in zip(GROUP_KEYS, group)
    )


def plot_improvements(method: str, pairs: list[tuple[Run, Run]], out_dir: str) -> tuple[str, str]:
    """Histogram of KD log-ppl − method log-ppl, and method-vs-KD scatter (each pair on its
    common rows); returns PNG names."""
    values = [pair_log_ppls(run, kd) for run, kd in pairs]
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
    keys = sorted({r.curve_key for r in runs})
    ax.set_ylabel(f"training {' / '.join(keys)} (metrics.jsonl)")
    ax.set_title("Loss against compute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_vs_flops.png"), dpi=120)
    plt.close(fig)
    return "loss_vs_flops.png"


def build_report(run_paths: Sequence[str], out_dir: str) -> str:
    """Writes DIR/report.md and its PNGs; returns the Markdown path."""
    runs = load_runs(run_paths)
    os.makedirs(out_dir, exist_ok=True)
    md = [
        "# Distillation sweep report",
        "",
        f"{len(runs)} runs. Log-perplexities are mean negative log-likelihoods in nats per "
        "token (lower is better); errors are 1 − accuracy in percent. "
        "HellaSwag, PIQA and ARC-Easy are length-normalised per character, WinoGrande "
        "uses partial scoring, LAMBADA is greedy last-word accuracy.",
        "",
    ]
    missing = [r.name for r in runs if r.log_ppl is None]
    if missing:
        md += [
            f"Not evaluated (no eval.json with a log-ppl; run `python -m trainer.evaluate "
            f"--checkpoint RUN_DIR`): {', '.join(missing)}.",
            "",
        ]
    left_out = unranked(runs)
    if left_out:
        md += [
            "Not ranked (held-out score over other rows than the other runs of its method; "
            "re-evaluate on the same store without --limit): "
            + ", ".join(f"{r.name} ({eval_results.describe(r.eval[r.ppl_task])})" for r in left_out)
            + ".",
            "",
        ]
    best = best_per_method(runs)
    for group in sorted({r.group for r in best}, key=str):
        md += [
            f"## Best run per method ({_group_title(group)})",
            "",
            "Per method, the setting with the lowest held-out log-perplexity (mean over "
            "seeds when a setting was run with several; the row shows its first seed).",
            "",
            _table([r for r in best if r.group == group]),
            "",
        ]
    pairs, refused = kd_pairs(runs), refused_pairs(runs)
    if pairs or refused:
        md += [
            "## Improvement over KD at shared hyper-parameters",
            "",
            "Each pair: a run of the method and the KD run with the same value of every "
            "setting that differs between the runs and both methods read (seed, tail, "
            "k, divergence, α schedule, ... ; same model and budget). "
            "Δ = KD log-ppl − method log-ppl; Δ > 0 means the method helped.",
            "",
            "Δ err = KD error − method error in points, averaged over the tasks both "
            "runs were evaluated on with the same rows.",
            "",
            "Both runs of a pair are compared on the same rows (the largest row set both "
            "were scored on); a pair without one gets no Δ and is counted as refused.",
            "",
            "| method | pairs | mean Δ | min Δ | max Δ | method better | mean Δ err (pp) "
            "| refused: rows differ |",
            "|---|---|---|---|---|---|---|---|",
        ]
        figures = []
        for method in sorted(set(pairs) | set(refused)):
            method_pairs, no_delta = pairs.get(method, []), refused.get(method, [])
            refused_cell = (
                f"{len(no_delta)}: " + ", ".join(f"{r.name}/{k.name}" for r, k in no_delta)
                if no_delta
                else "0"
            )
            if not method_pairs:
                md.append(f"| {method.upper()} | 0 | – | – | – | – | – | {refused_cell} |")
                continue
            deltas = [k - m for m, k in (pair_log_ppls(run, kd) for run, kd in method_pairs)]
            wins = sum(d > 0 for d in deltas)
            err = [e for e in (_error_delta(run, kd) for run, kd in method_pairs) if e is not None]
            err_cell = f"{sum(err) / len(err):+.2f} ({len(err)} pairs)" if err else "–"
            md.append(
                f"| {method.upper()} | {len(deltas)} | {sum(deltas) / len(deltas):+.4f} | "
                f"{min(deltas):+.4f} | {max(deltas):+.4f} | {wins}/{len(deltas)} | "
                f"{err_cell} | {refused_cell} |"
            )
            figures += plot_improvements(method, method_pairs, out_dir)
        md += [""] + [f"![{f}]({f})" for f in figures] + [""]
    curves = plot_curves(runs, out_dir)
    if curves:
        md += [
            "## Training loss against compute",
            "",
            "Loss as logged in metrics.jsonl against cumulative training FLOPs "
            "(methods are compared at equal FLOPs, not equal tokens).",
            "",
            f"![loss vs FLOPs]({curves})",
            "",
        ]
    md += ["## All runs", "", _table(runs), ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="*", help="run directories (or directories of them)")
    p.add_argument("--out", required=True, help="output directory for report.md and PNGs")
    args = p.parse_args(argv)
    try:
        print(build_report(args.run_dirs, args.out))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
