"""bench/profile_quality.py's analysis: pairing checks, paired deltas, spreads, the table.

    differs = check_pairing(stores, runs)      # ValueError unless paired runs are comparable
    summary = summarise(rows, runs, seeds=2, profile_seeds=2, goals={"compact": 0.005})
    print(markdown_table(summary))

A row is a store profile (`exact`, `compact`, ...) or `live`: students of the
live full-vocabulary teacher (no store). Every delta is paired: the mean over
seeds 0 .. profile_seeds - 1 of (this row's student - the reference row's
student of the same seed and method), against each reference row present:
`live` first (what storing the teacher costs against its whole distribution),
then `exact` (the stored profiles' goals are stated against it). Reference rows
train every seed, so their seed spread (max - min) is measured beside the
deltas. Pure functions of the runs' numbers and configs: the tests check them
by hand.
"""

from __future__ import annotations

METHODS = ("kd", "hldc")
LIVE = "live"
# The rows deltas are measured against, in the table's column order.
REFERENCES = (LIVE, "exact")

# Array-name prefixes of each part of a store, for the bytes/token breakdown.
FAMILIES = {
    "tokens": ("tokens",),
    "logits": ("topk/", "sampled/"),
    "activations": ("hidden/", "hidden_aux/"),
}


def run_name(row: str, method: str, seed: int) -> str:
    return f"{row}_{method}_s{seed}"


def references(names) -> list[str]:
    """The reference rows among `names`, in column order (exact is always one)."""
    if "exact" not in names:
        raise ValueError("the rows must include exact: the stored profiles' goals are against it")
    return [r for r in REFERENCES if r in names]


def family_bytes(arrays: dict) -> dict:
    """{family: bytes/token} from {array name: bytes/token} (None if any is unknown)."""
    out = {}
    for family, prefixes in FAMILIES.items():
        values = [v for name, v in arrays.items() if name.startswith(prefixes)]
        out[family] = None if None in values else sum(values)
    return out


# The config keys in which a row's student may differ from exact's student of the
# same method and seed: where it reads its teacher signal. Everything else
# (seed, so initialisation and data order; budget; model; loss and optimizer
# settings; batch) must be equal, or the paired delta is not the signal's effect.
PAIRED_DIFFERENCES = {
    "run_dir",
    "store.url",
    "data.k",
    "data.samples",
    "loss.signal",
    "teacher.checkpoint",
}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_pairing(stores: dict, runs: dict, added_fields: dict | None = None) -> dict:
    """Checks what paired runs share; returns {row: the config keys it differs in from exact}.

    Args:
        stores: {profile: dump_profile result} (each with its teacher's fingerprint).
        runs: {run name: train_and_score result}, with their configs.
        added_fields: config keys added after some runs were trained, with the value
            that reproduces the older behaviour (trainer.training.config.ADDED_FIELDS):
            a run's config.json without one reads as holding it, so a resumed OUT
            with runs of older code still pairs.

    Raises:
        ValueError: a run differs from exact's of its seed in more than
            PAIRED_DIFFERENCES, ran other steps or tokens, a live run did not read
            exact's store, or its teacher is not the one in the stores.
    """
    fingerprints = {s["teacher_fingerprint"] for s in stores.values()}
    differs: dict[str, set] = {}
    for run in runs.values():
        name, m, seed = run["profile"], run["method"], run["seed"]
        ref = runs[run_name("exact", m, seed)]
        a = {**(added_fields or {}), **_flat(run["config"])}
        b = {**(added_fields or {}), **_flat(ref["config"])}
        keys = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        problems = sorted(keys - PAIRED_DIFFERENCES)
        if problems or (run["steps"], run["tokens"]) != (ref["steps"], ref["tokens"]):
            raise ValueError(
                f"{run_name(name, m, seed)} is not paired with {run_name('exact', m, seed)}: "
                f"config keys {problems} differ, steps/tokens {run['steps']}/{run['tokens']} vs "
                f"{ref['steps']}/{ref['tokens']}; delete both runs' markers in OUT/.done and rerun"
            )
        if name == LIVE:
            if a["store.url"] != b["store.url"]:
                raise ValueError(f"{run_name(name, m, seed)} did not read exact's store (tokens)")
            live = run["live_teacher"]["fingerprint"]
            if {live} != fingerprints:
                raise ValueError(
                    f"{run_name(name, m, seed)}'s live teacher {live[:12]}… is not the teacher "
                    f"dumped into the stores ({sorted(f[:12] for f in fingerprints)}); "
                    f"rerun in a fresh --out"
                )
        differs.setdefault(name, set()).update(keys)
    return {name: sorted(keys - {"run_dir"}) for name, keys in differs.items()}


def _spread(runs: dict, row: str, method: str, seeds: int) -> float | None:
    ppl = [runs[run_name(row, method, s)]["log_ppl"] for s in range(seeds)]
    return max(ppl) - min(ppl) if seeds > 1 else None


def summarise(
    rows: dict, runs: dict, seeds: int, profile_seeds: int = 1, goals: dict | None = None
) -> dict:
    """Paired deltas vs each reference row, the references' seed spreads, the goal verdicts.

    Args:
        rows: {row: {"bytes_per_token", "arrays"}} for a store (`store inspect`'s
            numbers), {"teacher_flops_per_token"} for `live` (it has no store).
        runs: {run name: {"log_ppl", ...}}.
        seeds: seeds every reference row trained per method.
        profile_seeds: seeds 0.. every other row trained (<= seeds); each row's
            log-ppl and deltas are means over these seeds.
        goals: {row: bound on its delta vs exact} (the issue's goals; missing or
            None: a diagnostic row).

    Returns:
        {"references": [...], "spread": {ref: {method: max - min, or None with one seed}},
         "rows": {row: {..., method: {"log_ppl", "delta": {ref: mean or None},
                                      "seed_deltas": {ref: [...]}, "goal_met",
                                      "beyond_spread"}}}}.
        The delta against a row's own reference is None; `goal_met` judges the
        delta vs exact; `beyond_spread` compares |delta vs the first reference|
        with that reference's spread.
    """
    refs = references(rows)
    goals = goals or {}
    spread = {ref: {m: _spread(runs, ref, m, seeds) for m in METHODS} for ref in refs}
    out = {}
    for name, info in rows.items():
        goal = None if name in refs else goals.get(name)
        row: dict = {"goal_nats": goal}
        if name == LIVE:
            row["teacher_flops_per_token"] = info.get("teacher_flops_per_token")
        else:
            row["bytes_per_token"] = info["bytes_per_token"]
            row["family_bytes_per_token"] = family_bytes(info["arrays"])
        for m in METHODS:
            ppl = [runs[run_name(name, m, s)]["log_ppl"] for s in range(profile_seeds)]
            seed_deltas: dict[str, list[float] | None] = {}
            delta: dict[str, float | None] = {}
            for ref in refs:
                if ref == name:
                    seed_deltas[ref], delta[ref] = None, None
                    continue
                paired = [p - runs[run_name(ref, m, s)]["log_ppl"] for s, p in enumerate(ppl)]
                seed_deltas[ref], delta[ref] = paired, sum(paired) / profile_seeds
            noise, first = spread[refs[0]][m], delta[refs[0]]
            row[m] = {
                "log_ppl": sum(ppl) / profile_seeds,
                "delta": delta,
                "seed_deltas": seed_deltas,
                "goal_met": None if goal is None else delta["exact"] <= goal,
                "beyond_spread": None if noise is None or first is None else abs(first) > noise,
            }
        out[name] = row
    return {"references": refs, "spread": spread, "rows": out}


def _nats(delta: float) -> str:
    """A delta to 4 decimals, or in e-notation when that would print as 0.0000."""
    return f"{delta:+.4f}" if abs(delta) >= 5e-5 else f"{delta:+.0e}"


def _methods_where(row: dict, test) -> str:
    return ", ".join(m.upper() for m in METHODS if test(row[m]))


def _verdict(row: dict) -> str:
    """'yes', 'yes (HLDC better by more than the goal)' or 'NO (KD)'; '–' without a goal."""
    if row["goal_nats"] is None:
        return "–"
    worse = _methods_where(row, lambda r: not r["goal_met"])
    if worse:
        return f"NO ({worse})"
    better = _methods_where(row, lambda r: r["delta"]["exact"] < -row["goal_nats"])
    return f"yes ({better} better by more than the goal)" if better else "yes"


def _bytes_cell(name: str, row: dict) -> str:
    if name == LIVE:
        flops = row["teacher_flops_per_token"]
        cost = "?" if flops is None else f"{flops / 1e6:.1f} MFLOP/token"
        return f"no store (teacher forward in every step: {cost})"
    parts = " + ".join(
        "?" if v is None else f"{v:.0f}" for v in row["family_bytes_per_token"].values()
    )
    bpt = "?" if row["bytes_per_token"] is None else f"{row['bytes_per_token']:.1f}"
    return f"{bpt} ({parts})"


def markdown_table(summary: dict) -> str:
    """The docs table: one row per row of the bench, then each reference's seed spread."""
    refs, first = summary["references"], summary["references"][0]
    header = ["row", "B/token on disk (tokens + logits + activations)"]
    for m in METHODS:
        header += [f"{m.upper()} log-ppl", *(f"Δ {m.upper()} vs {ref}" for ref in refs)]
    header += ["goal: Δ vs exact ≤", "met?", f"\\|Δ vs {first}\\| > {first}'s seed spread"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary["rows"].items():
        cells = [name, _bytes_cell(name, row)]
        for m in METHODS:
            cells.append(f"{row[m]['log_ppl']:.4f}")
            cells += [
                "–" if row[m]["delta"][r] is None else _nats(row[m]["delta"][r]) for r in refs
            ]
        goal = "–" if row["goal_nats"] is None else f"{row['goal_nats']:g}"
        if row[METHODS[0]]["beyond_spread"] is None:
            noise = "–"
        else:
            noise = _methods_where(row, lambda r: r["beyond_spread"]) or "neither"
        md.append("| " + " | ".join([*cells, goal, _verdict(row), noise]) + " |")
    for ref in refs:  # The spread sits under the Δ column it is the noise of.
        cells = [f"{ref} seed spread (max−min)", ""]
        for m in METHODS:
            value = summary["spread"][ref][m]
            cells += [""] + [
                ("n/a" if value is None else f"{value:.4f}") if r == ref else "" for r in refs
            ]
        md.append("| " + " | ".join([*cells, "", "", ""]) + " |")
    return "\n".join(md)
