"""OUT/summary.{md,json}: one row per point, ranked by held-out log-ppl on equal row sets."""

from __future__ import annotations

import json
import os
from typing import Any

from trainer.report import rundirs
from trainer.sweep.grid import point_name, points
from trainer.sweep.reuse import eval_done, heldout_scores
from trainer.training import config as config_lib
from trainer.training import eval_results

# Final training loss terms shown next to the ranking (never used to rank).
SUMMARY_KEYS = ("loss", "nll", "kd", "hidden_mse", "top1_agreement", "global_step")
# config.json keys that differ between points without being settings.
_NOT_SETTINGS = ("run_dir",)


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def summary_rows(out: str, grid: dict, evaluate: dict | None) -> list[dict]:
    """One row per point: its differing settings, held-out log-ppl (with its row set),
    final loss, status; ranked by held-out log-ppl among the points scored on the
    same rows (the row set most points share); the others follow in grid order."""
    rows: list[dict[str, Any]] = []
    store = (evaluate or {}).get("store")
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        row: dict[str, Any] = {"point": point_name(point), "settings": dict(point)}
        if os.path.exists(os.path.join(run_dir, "config.json")):
            run = rundirs.load_run(run_dir)  # The report's reader: one parser of run dirs.
            with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
                row["settings"] = config_lib.flatten(json.load(f))
            score = (
                heldout_scores(run_dir, (), store)[1]
                if store
                else run.eval.get(run.ppl_task)
                if run.ppl_task
                else None
            )
            if score is not None and "log_ppl" in score:
                row.update(
                    log_ppl=float(score["log_ppl"]),
                    log_ppl_se=score.get("log_ppl_se"),
                    heldout_n=score.get("n"),
                    heldout_rows=score.get("rows"),
                    _rows=eval_results.row_key(score),
                )
        final = os.path.join(run_dir, "final.json")
        if not os.path.exists(final):
            row["status"] = f"failed: {_last_line(os.path.join(run_dir, 'train.log'))}"
        elif evaluate and not eval_done(run_dir, evaluate["tasks"], store):
            row["status"] = f"eval failed: {_last_line(os.path.join(run_dir, 'eval.log'))}"
        else:
            row["status"] = "done"
        if os.path.exists(final):
            with open(final, encoding="utf-8") as f:
                summary = json.load(f)
            row.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
        rows.append(row)
    differ = differing_settings(rows)
    for row in rows:
        row["settings"] = {k: row["settings"].get(k) for k in differ}
    keys = [r["_rows"] for r in rows if "_rows" in r]
    majority = max(
        set(keys),
        key=lambda k: (
            keys.count(k),
            max(r.get("heldout_n") or 0 for r in rows if r.get("_rows") == k),
        ),
        default=None,
    )
    ranked_rows = [r for r in rows if r.get("_rows") == majority and majority is not None]
    for row in rows:
        key = row.pop("_rows", None)
        row["ranked"] = key is not None and key == majority
        if key is not None and key != majority:
            shown = eval_results.describe(
                {"n": row.get("heldout_n"), "rows": row.get("heldout_rows")}
            )
            over = eval_results.describe(
                {"n": ranked_rows[0].get("heldout_n"), "rows": ranked_rows[0].get("heldout_rows")}
            )
            row["status"] += f"; not ranked: heldout over {shown}, the ranked points over {over}"
    ranked = sorted((r for r in rows if r["ranked"]), key=lambda r: r["log_ppl"])
    return ranked + [r for r in rows if not r["ranked"]]


def differing_settings(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every row (run_dir, debug.* aside)."""
    keys = sorted({k for r in rows for k in r["settings"]})
    return [
        k
        for k in keys
        if k not in _NOT_SETTINGS
        and not k.startswith("debug.")
        and len({json.dumps(r["settings"].get(k)) for r in rows}) > 1
    ]


def markdown_table(rows: list[dict], evaluate: dict | None = None) -> str:
    """Markdown: rank, differing settings, held-out log-ppl, final training terms, status;
    the note above it says what the ranking is, or why there is none."""
    settings = list(rows[0]["settings"]) if rows else []
    metric_keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
    cols = ["rank"] + settings + ["heldout log-ppl"] + [f"final {k}" for k in metric_keys]
    lines = ["| " + " | ".join(cols + ["status"]) + " |", "|" + "---|" * (len(cols) + 1)]

    def fmt(v):
        return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for i, row in enumerate(rows):
        rank = str(i + 1) if row.get("ranked") else "–"
        cells = (
            [rank]
            + [fmt(row["settings"][k]) for k in settings]
            + [fmt(row.get("log_ppl"))]
            + [fmt(row.get(k)) for k in metric_keys]
            + [row["status"]]
        )
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Ranked by held-out log-perplexity (lower is better). Final training losses are "
        "shown, not ranked: with different α, τ or γ they are different objectives."
    )
    if not any(r.get("ranked") for r in rows):
        note = "Not ranked: " + _why_unranked(rows, evaluate)
    return note + "\n\n" + "\n".join(lines) + "\n"


def _why_unranked(rows: list[dict], evaluate: dict | None) -> str:
    """Why no point has a held-out log-ppl, and the fix that applies (never flags already passed)."""
    failed = [r for r in rows if r["status"].startswith("failed")]
    if rows and len(failed) == len(rows):
        return (
            f"every point failed to train ({len(failed)} of {len(rows)}); the status column "
            f"has the last line of each point's train.log — fix that and re-run the same command."
        )
    if failed:
        return (
            f"{len(failed)} of {len(rows)} points failed to train and the others have no held-out "
            f"log-perplexity; see the status column (train.log / eval.log of each point)."
        )
    if evaluate is None or "heldout" not in evaluate.get("tasks", ()):
        return (
            "no point has a held-out log-perplexity; re-run the same command with "
            "--evaluate heldout --eval-store HELDOUT_STORE."
        )
    return (
        "the held-out evaluation failed for every point; the status column has the last "
        "line of each point's eval.log — fix that and re-run the same command."
    )
