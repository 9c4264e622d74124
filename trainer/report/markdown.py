"""DIR/report.md: the tables (best run per method, improvement over KD, all runs) and
the notes saying which runs were left out of a comparison and why."""

from __future__ import annotations

import os
from collections.abc import Sequence

from trainer.report import plots
from trainer.report.compare import (
    best_per_method,
    error_delta,
    kd_pairs,
    mean_error_tasks,
    pair_values,
    refused_pairs,
    unranked,
)
from trainer.report.rundirs import (
    ERROR_TASKS,
    GROUP_KEYS,
    PPL_TASKS,
    SEED_KEY,
    Run,
    load_runs,
)
from trainer.training import eval_results


def _fmt(value, digits=4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


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
            + ", ".join(f"{r.name} ({eval_results.describe(r.ppl_score or {})})" for r in left_out)
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
        figures: list[str] = []
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
            deltas = [k - m for m, k in pair_values(method_pairs)]
            wins = sum(d > 0 for d in deltas)
            err = [e for e in (error_delta(run, kd) for run, kd in method_pairs) if e is not None]
            err_cell = f"{sum(err) / len(err):+.2f} ({len(err)} pairs)" if err else "–"
            md.append(
                f"| {method.upper()} | {len(deltas)} | {sum(deltas) / len(deltas):+.4f} | "
                f"{min(deltas):+.4f} | {max(deltas):+.4f} | {wins}/{len(deltas)} | "
                f"{err_cell} | {refused_cell} |"
            )
            figures += plots.plot_improvements(method, method_pairs, out_dir)
        md += [""] + [f"![{f}]({f})" for f in figures] + [""]
    curves = plots.plot_curves(runs, out_dir)
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
