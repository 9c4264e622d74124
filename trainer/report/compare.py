"""Which runs are compared: ranking per method, KD pairs and their Δ, on equal row sets.

Runs are compared only within one (model, budget) group, and scores only on
equal row sets (eval.json records a digest of the rows each score was computed
on, see trainer/training/eval_results.py): a pair scored on different rows gets
no Δ (refused), a run whose held-out score is over other rows than its method's
other runs is not ranked, and the "mean err %" column averages only the tasks
every run shares on the same rows.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Sequence

from trainer.report.rundirs import (
    ERROR_TASKS,
    METHODS,
    PPL_TASKS,
    REFERENCE_METHOD,
    SEED_KEY,
    Run,
)
from trainer.training import eval_results


def majority_rows(runs: Sequence[Run]) -> tuple | None:
    """The held-out row set most of `runs` were scored on (ties: the larger n)."""
    counts = collections.Counter(r.ppl_rows for r in runs if r.ppl_rows is not None)
    if not counts:
        return None
    n_of = {r.ppl_rows: (r.ppl_score or {}).get("n") or 0 for r in runs if r.ppl_rows is not None}
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

    def mean_ppl(members: list[Run]) -> float:  # Every member has a log-ppl (filtered above).
        return sum(r.log_ppl or 0.0 for r in members) / len(members)

    for (group, method, _), members in settings.items():
        mean = mean_ppl(members)
        key = (group, method)
        if key not in best or mean < mean_ppl(best[key]):
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


def pair_values(pairs: Sequence[tuple[Run, Run]]) -> list[tuple[float, float]]:
    """(method log-ppl, KD log-ppl) of each pair that has common rows (all of `kd_pairs`)."""
    return [v for v in (pair_log_ppls(run, kd) for run, kd in pairs) if v is not None]


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


def error_delta(run: Run, kd: Run) -> float | None:
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
