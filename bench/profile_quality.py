"""Store profiles judged by the students they train: held-out log-ppl vs `exact`.

    .venv/bin/python bench/profile_quality.py [--size cpu|ci|gpu] [--profiles exact,compact,...]
        [--seeds 2] [--profile-seeds 1] [--out bench/results/profile_quality_<size>]

One teacher (the demo's: `scripts.demo` stages corpus → tokenizer → spine →
teacher, trained once and cached in OUT, so a rerun reuses it) is dumped into
every profile below (`python -m pipelines.dump --profile ...`). From each store
KD and HLDC students train with the same seed and FLOPs budget (the demo's
student budget and loss defaults), and `trainer.evaluate` scores every
held-out row. `exact` trains `--seeds` seeds of each method, so the seed
spread (max - min over seeds) is measured beside the deltas; every other
profile trains seeds 0 .. `--profile-seeds` - 1, and its delta is paired: the
mean over those seeds of (its student - exact's student of the same seed).
The same seed means the same initialisation and data order, so the delta is
the store's effect with far less noise than a different seed brings (the
spread); the log-ppl shown for every row is the mean over those same seeds.

Every step leaves a marker in OUT/.done, so a rerun resumes where it stopped.
Writes OUT/profile_quality.json and prints a markdown table (bytes/token on
disk of each store, from `python -m store inspect --json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import demo, demo_results, demo_stages  # noqa: E402
from scripts.demo_sizes import get_size  # noqa: E402
from store import StoreSchema  # noqa: E402
from store import profiles as store_profiles

METHODS = ("kd", "hldc")


@dataclasses.dataclass(frozen=True)
class ProfileRun:
    """One store the teacher is dumped into.

    Attributes:
        store_profile: `pipelines.dump --profile` (a `store.profiles` name).
        topk: store the size's top-k (False: k=0, the logit signal is sampled only).
        samples: `--samples` draws per position (0: none).
        goal_nats: the issue's bound on how much worse than exact the students may be
            (delta = log-ppl - exact's <= goal_nats; a better student meets it too, and
            the table says "better"). None: no goal, a diagnostic row.
        about: what the row isolates, for the table.
    """

    store_profile: str
    topk: bool
    samples: int
    goal_nats: float | None
    about: str


PROFILES = {
    "exact": ProfileRun("exact", True, 0, None, "reference: float16 activations, top-k"),
    "compact": ProfileRun(
        "compact", True, 0, 0.005, "int8 activations + outliers, companded top-k"
    ),
    "lean": ProfileRun(
        "lean",
        False,
        12,
        0.01,
        "the <= 1 KB/token profile: 6-level activations, 12 sampled logits, no top-k",
    ),
    "exact_s12": ProfileRun(
        "exact",
        False,
        12,
        None,
        "exact activations, 12 sampled logits, no top-k (the logit signal alone)",
    ),
}


def store_k(ctx, profile: ProfileRun) -> int:
    return ctx.size.k if profile.topk else 0


def student_sets(ctx, profile: ProfileRun) -> list[str]:
    """Trainer overrides that point a student at this store's logit signal."""
    sets = [f"data.k={store_k(ctx, profile)}", "loss.signal=topk"]  # The demo's default is sampled.
    if not profile.topk:  # KD reads the sampled logits (trainer.training.sampled_kd).
        sets += ["loss.signal=sampled", f"data.samples={profile.samples}"]
    return sets


def check_available(names: list[str]) -> None:
    """Refuses profiles this checkout cannot dump, before hours of training."""
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise ValueError(f"unknown profile(s) {unknown}; use some of {sorted(PROFILES)}")
    if "exact" not in names:
        raise ValueError("--profiles must include exact: every delta is measured against it")
    missing = sorted({PROFILES[n].store_profile for n in names} - set(store_profiles.PROFILES))
    if missing:
        raise ValueError(
            f"store profile(s) {missing} are not in this checkout's store.profiles; "
            f"drop them from --profiles or merge the branch that adds them"
        )
    sampled = [n for n in names if PROFILES[n].samples]
    if sampled and "samples" not in {f.name for f in dataclasses.fields(StoreSchema)}:
        raise ValueError(
            f"profile(s) {sampled} need sampled logits (StoreSchema.samples), not in this "
            f"checkout; drop them from --profiles or merge the branch that adds them"
        )


def _once(ctx, key: str, fn) -> str:
    """Runs fn() unless OUT/.done/KEY exists; returns the marker's "<UTC time> <git sha>".

    The marker is left after fn() succeeded; it records when and from which
    commit, since a rerun after a merge reuses results made by older code.
    """
    marker = ctx.path(".done", key)
    if os.path.exists(marker):
        print(f"[profile_quality] {key}: done earlier, skipped", flush=True)
    else:
        print(f"[profile_quality] {key}", flush=True)
        fn()
        with open(marker, "w") as f:
            f.write(f"{datetime.datetime.now(datetime.UTC).isoformat()} {_git_sha()}\n")
    with open(marker, encoding="utf-8") as f:
        return f.read().strip()


def _store_cli(ctx, command: str, store: str) -> dict:
    out = demo_stages.run(ctx, "inspect", "-m", "store", command, store, "--json")
    return json.loads(out[out.index("{") :])


def dump_profile(ctx, name: str) -> dict:
    """Dumps the cached teacher into OUT/stores/NAME (once); returns its inspect summary."""
    profile, store = PROFILES[name], ctx.path("stores", name)
    args = [
        *demo_stages.teacher_dump_args(ctx, store, store_k(ctx, profile)),
        "--profile",
        profile.store_profile,
    ]
    if profile.samples:
        args += ["--samples", str(profile.samples)]
    done = _once(ctx, f"dump_{name}", lambda: demo_stages.run(ctx, "dump", *args))
    info = _store_cli(ctx, "inspect", store)
    return {
        "store": store,
        "dumped": done,
        "committed_rows": info["committed_rows"],
        "bytes_per_token": info["bytes_per_token"],
        "arrays": {a["name"]: a["bytes_per_token"] for a in info["arrays"]},
    }


def run_name(profile: str, method: str, seed: int) -> str:
    return f"{profile}_{method}_s{seed}"


def train_and_score(ctx, name: str, method: str, seed: int) -> dict:
    """One student from OUT/stores/NAME: trained and scored once; returns its numbers."""
    run = run_name(name, method, seed)
    done = _once(
        ctx,
        f"train_{run}",
        lambda: demo_stages.train_run(
            ctx,
            "students",
            method,
            ctx.path("runs", run),
            ctx.path("stores", name),
            ctx.size.student_budget,
            f"seed={seed}",
            *student_sets(ctx, PROFILES[name]),
        ),
    )
    _once(ctx, f"eval_{run}", lambda: demo_stages.evaluate_heldout(ctx, run))
    r = demo_results.load_run(ctx, run)
    return {
        "profile": name,
        "method": method,
        "seed": seed,
        "trained": done,
        "log_ppl": r["eval"]["heldout"]["log_ppl"],
        "heldout_rows": r["eval"]["heldout"].get("n"),
        "flops": r["flops"],
        "tokens": r["tokens"],
        "steps": r["steps"],
    }


def summarise(stores: dict, runs: dict, seeds: int, profile_seeds: int = 1) -> dict:
    """Paired deltas vs exact, exact's seed spread per method, and the goal verdicts.

    Args:
        stores: {profile: dump_profile result}.
        runs: {run name: train_and_score result}.
        seeds: seeds exact trained per method.
        profile_seeds: seeds 0.. every other profile trained (<= seeds); each
            row's log-ppl and delta are means over these seeds.

    Returns:
        {"spread": {method: max - min over exact's seeds, or None with one seed},
         "profiles": {profile: {"bytes_per_token", method: {"log_ppl", "delta", "goal_met",
                                 "beyond_spread"}}}}.
    """
    spread = {}
    for m in METHODS:
        ppl = [runs[run_name("exact", m, s)]["log_ppl"] for s in range(seeds)]
        spread[m] = max(ppl) - min(ppl) if seeds > 1 else None
    out = {}
    for name, store in stores.items():
        goal = PROFILES[name].goal_nats
        row = {
            "bytes_per_token": store["bytes_per_token"],
            "goal_nats": goal,
            "family_bytes_per_token": family_bytes(store["arrays"]),
        }
        for m in METHODS:
            ppl = [runs[run_name(name, m, s)]["log_ppl"] for s in range(profile_seeds)]
            deltas = [p - runs[run_name("exact", m, s)]["log_ppl"] for s, p in enumerate(ppl)]
            delta = sum(deltas) / profile_seeds
            row[m] = {
                "log_ppl": sum(ppl) / profile_seeds,
                "delta": delta,
                "seed_deltas": deltas,
                "goal_met": None if goal is None or name == "exact" else delta <= goal,
                "beyond_spread": None
                if spread[m] is None or name == "exact"
                else abs(delta) > spread[m],
            }
        out[name] = row
    return {"spread": spread, "profiles": out}


# Array-name prefixes of each part of a store, for the bytes/token breakdown.
FAMILIES = {
    "tokens": ("tokens",),
    "logits": ("topk/", "sampled/"),
    "activations": ("hidden/", "hidden_aux/"),
}


def family_bytes(arrays: dict) -> dict:
    """{family: bytes/token} from {array name: bytes/token} (None if any is unknown)."""
    out = {}
    for family, prefixes in FAMILIES.items():
        values = [v for name, v in arrays.items() if name.startswith(prefixes)]
        out[family] = None if None in values else sum(values)
    return out


def _nats(delta: float) -> str:
    """A delta to 4 decimals, or in e-notation when that would print as 0.0000."""
    return f"{delta:+.4f}" if abs(delta) >= 5e-5 else f"{delta:+.0e}"


def _methods_where(row: dict, test) -> str:
    return ", ".join(m.upper() for m in METHODS if test(row[m]))


def _verdict(row: dict) -> str:
    """'yes', 'yes (HLDC better by more than the goal)' or 'NO (KD)'; '–' without a goal."""
    if row["goal_nats"] is None or row[METHODS[0]]["goal_met"] is None:
        return "–"
    worse = _methods_where(row, lambda r: not r["goal_met"])
    if worse:
        return f"NO ({worse})"
    better = _methods_where(row, lambda r: r["delta"] < -row["goal_nats"])
    return f"yes ({better} better by more than the goal)" if better else "yes"


def markdown_table(summary: dict) -> str:
    """The README table: one row per profile, then exact's seed spread."""
    md = [
        "| profile | B/token on disk (tokens + logits + activations) | KD log-ppl | Δ KD vs exact "
        "| HLDC log-ppl | Δ HLDC vs exact | goal: Δ ≤ | met? | \\|Δ\\| > exact's seed spread |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["profiles"].items():
        cells = []
        for m in METHODS:
            cells += [
                f"{row[m]['log_ppl']:.4f}",
                "–" if name == "exact" else _nats(row[m]["delta"]),
            ]
        parts = " + ".join(
            "?" if v is None else f"{v:.0f}" for v in row["family_bytes_per_token"].values()
        )
        bpt = "?" if row["bytes_per_token"] is None else f"{row['bytes_per_token']:.1f}"
        goal = "–" if row["goal_nats"] is None else f"{row['goal_nats']:g}"
        if row[METHODS[0]]["beyond_spread"] is None:
            noise = "–"
        else:
            noise = _methods_where(row, lambda r: r["beyond_spread"]) or "neither"
        md.append(
            f"| {name} | {bpt} ({parts}) | "
            + " | ".join(cells)
            + f" | {goal} | {_verdict(row)} | {noise} |"
        )
    spread = summary["spread"]
    md.append(
        "| exact seed spread (max−min) | | | "
        + " | | ".join("n/a" if spread[m] is None else f"{spread[m]:.4f}" for m in METHODS)
        + " | | | |"
    )
    return "\n".join(md)


def _git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run_bench(
    size_name: str, out_dir: str, names: list[str], seeds: int, profile_seeds: int = 1
) -> dict:
    """Teacher (cached) → one store per profile → students → OUT/profile_quality.json."""
    check_available(names)
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: exact needs at least one seed per method")
    if not 1 <= profile_seeds <= seeds:
        raise ValueError(
            f"--profile-seeds {profile_seeds} must be in [1, --seeds={seeds}]: "
            f"each profile seed is paired with exact's student of that seed"
        )
    out_dir = os.path.abspath(out_dir)
    demo.run_demo(size_name, out_dir, until="teacher")
    ctx = demo_stages.Context(size=get_size(size_name), out=out_dir)
    stores = {name: dump_profile(ctx, name) for name in names}
    runs = {}
    for name in names:
        for m in METHODS:
            for seed in range(seeds if name == "exact" else profile_seeds):
                runs[run_name(name, m, seed)] = train_and_score(ctx, name, m, seed)
    result = {
        "size": size_name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "git_sha": _git_sha(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "student_flops_budget": ctx.size.student_budget,
        "k": ctx.size.k,
        "samples": {n: PROFILES[n].samples for n in names},
        "about": {n: PROFILES[n].about for n in names},
        "stores": stores,
        "runs": runs,
        "profile_seeds": profile_seeds,
        **summarise(stores, runs, seeds, profile_seeds),
    }
    with open(ctx.path("profile_quality.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", default="cpu", help="demo size: cpu | ci | gpu (scripts/demo_sizes.py)"
    )
    p.add_argument(
        "--profiles",
        default=",".join(PROFILES),
        help=f"comma-separated, must include exact (default: all of {list(PROFILES)})",
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds of each exact student (spread)")
    p.add_argument(
        "--profile-seeds",
        type=int,
        default=1,
        help="seeds of each other profile's students, paired with exact's (<= --seeds)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (resumable; default bench/results/profile_quality_<size>)",
    )
    args = p.parse_args(argv)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"profile_quality_{args.size}"
    )
    try:
        get_size(args.size)
        result = run_bench(
            args.size,
            out,
            [n for n in args.profiles.split(",") if n],
            args.seeds,
            args.profile_seeds,
        )
    except ValueError as e:
        print(f"profile_quality: {e}", file=sys.stderr)
        return 2
    except (demo.StageFailed, demo_stages.CommandFailed) as e:
        print(f"profile_quality: {e}; rerun the same command to resume", file=sys.stderr)
        return 1
    print(markdown_table(result))
    print(f"\n(JSON: {os.path.join(out, 'profile_quality.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
