"""RUN_DIR/eval.json: what `trainer.evaluate` writes and `trainer.report` / `trainer.sweep` compare.

Lives below evaluation and reporting (like metrics.jsonl's reader) so both read
one definition. Every score carries what it was computed on::

    {"task": "heldout", "n": 139, "rows": "3f9c…" (sha256 prefix of the row set),
     "seq_len": 128, "fingerprint": "…" (the checkpoint's), "log_ppl": …, "log_ppl_se": …}
    {"task": "piqa", "n": 100, "rows": "…", "acc": …, "acc_se": …, "error": 1 - acc, …}

A file holds ``"scores": {task: [score, ...]}`` — one score per distinct row
set (``rows`` and ``seq_len``) — and ``"tasks": {task: score}``, the headline
score per task (the largest row set; the field older readers use). Scoring a
subset (``--limit``) adds a score beside the full-set one instead of replacing
it. Two scores are comparable only when their row sets are equal
(``comparable``); files written before row digests existed read as one score
per task whose row set is known only by its size (``rows`` None), comparable
only with another such score of the same size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

DIGEST_CHARS = 16  # 64 bits of sha256: a row-set name, not a security property.


def row_digest(parts: Iterable[bytes]) -> str:
    """A short sha256 of a row set given as byte strings, in scoring order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # Framed: ("ab", "c") != ("a", "bc").
        h.update(part)
    return h.hexdigest()[:DIGEST_CHARS]


def accuracy_se(acc: float, n: int) -> float | None:
    """Standard error of a mean of n 0/1 outcomes (sample std / sqrt n, as lm-eval); None for n < 2."""
    return math.sqrt(acc * (1.0 - acc) / (n - 1)) if n > 1 else None


def ratio_se(nll_per_row, tokens_per_row) -> float | None:
    """Standard error of Σnll / Σtokens over rows (the ratio estimator's, rows as the sampled units)."""
    x = [float(v) for v in nll_per_row]
    t = [float(v) for v in tokens_per_row]
    n, total = len(x), sum(t)
    if n < 2 or total <= 0:
        return None
    r = sum(x) / total
    resid = sum((xi - r * ti) ** 2 for xi, ti in zip(x, t)) / (n - 1)
    return math.sqrt(resid / n) / (total / n)


def row_key(score: dict) -> tuple:
    """What a score was computed on: (row digest, or "n=N" for a file without digests, seq_len)."""
    rows = score.get("rows")
    return (rows if rows else f"n={score.get('n')} (no digest)", score.get("seq_len"))


def describe(score: dict) -> str:
    """'n=139 rows 3f9c2a…' — how the row set of a score is shown to users."""
    rows = score.get("rows")
    return (
        f"n={score.get('n')} rows {rows[:8]}" if rows else f"n={score.get('n')} (rows not recorded)"
    )


def normalize(data: Any) -> dict:
    """An eval.json object (any version) as {"fingerprint", ..., "tasks", "scores"}; {} when unusable."""
    if not isinstance(data, dict):
        return {}
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    scores = data.get("scores") if isinstance(data.get("scores"), dict) else None
    if scores is None:  # Written before row sets were recorded: the headline is all there is.
        scores = {
            name: [dict(score, task=name, seq_len=score.get("seq_len", data.get("seq_len")))]
            for name, score in tasks.items()
            if isinstance(score, dict)
        }
    scores = {
        name: [s for s in lst if isinstance(s, dict)]
        for name, lst in scores.items()
        if isinstance(lst, list)
    }
    return {
        **data,
        "scores": scores,
        "tasks": {name: headline(lst) for name, lst in scores.items() if lst},
    }


def headline(scores: list[dict]) -> dict:
    """The score shown for a task: the largest row set (the latest of equal size)."""
    best = None
    for score in scores:
        if best is None or (score.get("n") or 0) >= (best.get("n") or 0):
            best = score
    return best


def merge(old: Any, new: dict) -> tuple[dict, list[str]]:
    """``new`` (an evaluation's result) merged into ``old`` (the file's content); returns (merged, notes).

    Scores of the same model (fingerprint) on other row sets are kept beside
    the new ones; a new score replaces only one on the same row set. Another
    model's file is replaced (a note says so).
    """
    notes = []
    old = normalize(old)
    new = normalize(new)
    if old and old.get("fingerprint") != new.get("fingerprint"):
        notes.append(
            f"held results of another model (fingerprint {str(old.get('fingerprint'))[:12]}…); "
            f"replaced"
        )
        old = {}
    scores = {name: list(lst) for name, lst in (old.get("scores") or {}).items()}
    for name, lst in new["scores"].items():
        kept = scores.setdefault(name, [])
        for score in lst:
            kept[:] = [s for s in kept if row_key(s) != row_key(score)] + [score]
        top = headline(kept)
        if any(row_key(top) != row_key(s) for s in lst):
            notes.append(
                f"{name}: the headline stays the score over {describe(top)}; the new one over "
                f"{describe(lst[-1])} is kept beside it in 'scores'"
            )
    merged = {
        **new,
        "scores": scores,
        "tasks": {name: headline(lst) for name, lst in scores.items()},
    }
    return merged, notes


def comparable(a: list[dict], b: list[dict]) -> tuple[dict, dict] | None:
    """Scores of one task from two runs on the same row set (the largest such), or None."""
    by_key = {row_key(s): s for s in b}
    pairs = [(s, by_key[row_key(s)]) for s in a if row_key(s) in by_key]
    return max(pairs, key=lambda p: p[0].get("n") or 0) if pairs else None


def load(path: str) -> dict:
    """Reads and normalizes an eval.json; {} when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return normalize(json.load(f))
    except (OSError, json.JSONDecodeError):
        return {}
