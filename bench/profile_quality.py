"""Store profiles judged by the students they train, against the live teacher.

    .venv/bin/python bench/profile_quality.py [--size cpu|ci|gpu] [--profiles live,exact,compact,...]
        [--seeds 2] [--profile-seeds 1] [--out bench/results/profile_quality_<size>]

One teacher (the demo's: `scripts.demo` stages corpus → tokenizer → spine →
teacher, trained once and cached in OUT, so a rerun reuses it) is dumped into
every store profile below (`python -m pipelines.dump --profile ...`). From
each store KD and HLDC students train with the same seed and FLOPs budget (the
demo's student budget and loss defaults), and `trainer.evaluate` scores every
held-out row. The `live` row has no store of its own: its students read the
tokens of `exact`'s store (the same rows, so the same data order) and the
teacher itself inside every step (`--set teacher.checkpoint=OUT/runs/teacher/export`):
KD over its full vocabulary (no top-k, no tail), HLDC against its hidden state
in float32 (what `exact` stores in float16). Its forward is not charged to the
student's budget (as the dump is not charged to the stored rows' students).

The reference rows (`live`, `exact`) train `--seeds` seeds of each method, so
their seed spread (max - min over seeds) is measured beside the deltas; every
other row trains seeds 0 .. `--profile-seeds` - 1, and its delta is paired:
the mean over those seeds of (its student - the reference's student of the
same seed). Same seed, same initialisation and data order: the bench checks
that paired runs' configs differ only in the store and signal they read
(PAIRED_DIFFERENCES), that they ran the same steps, and that the live teacher
is the one dumped into the stores (its fingerprint); the delta is then the
signal's effect with far less noise than a different seed brings (the spread).

Every step leaves a marker in OUT/.done, so a rerun resumes where it stopped;
seed 0 of every row trains before seed 1 of any. Writes OUT/profile_quality.json
and prints a markdown table (bytes/token on disk of each store, from
`python -m store inspect --json`; the arithmetic is bench/profile_quality_table.py).
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

from bench.profile_quality_table import (  # noqa: E402
    LIVE,
    METHODS,
    check_pairing,
    markdown_table,
    references,
    run_name,
    summarise,
)
from scripts import demo, demo_results, demo_stages  # noqa: E402
from scripts.demo_sizes import get_size  # noqa: E402
from store import StoreSchema  # noqa: E402
from store import profiles as store_profiles
from trainer.training import config as config_lib  # noqa: E402


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


LIVE_ABOUT = (
    "reference: the live teacher in every step, full vocabulary and float32 hidden, no store"
)
# Every row, in the default order: the live reference first.
ROWS = (LIVE, *PROFILES)


def student_sets(ctx, name: str) -> list[str]:
    """Trainer overrides that point a student at this row's teacher signal."""
    if name == LIVE:
        # Tokens from exact's store; the signal from the teacher itself. The config
        # refuses loss.signal=sampled (the demo's default) with a live teacher, and
        # data.k=0 / data.samples=0 say that no stored signal is read.
        return [
            f"teacher.checkpoint={teacher_checkpoint(ctx)}",
            "loss.signal=topk",
            "data.k=0",
            "data.samples=0",
        ]
    profile = PROFILES[name]
    sets = [f"data.k={store_k(ctx, profile)}", "loss.signal=topk"]  # The demo's default is sampled.
    if not profile.topk:  # KD reads the sampled logits (trainer.training.sampled_kd).
        sets += ["loss.signal=sampled", f"data.samples={profile.samples}"]
    return sets


def teacher_checkpoint(ctx) -> str:
    """The teacher every store is dumped from (demo_stages.teacher_dump_args) and `live` runs."""
    return ctx.path("runs", "teacher", "export")


def student_store(ctx, name: str) -> str:
    """The store a row's students read: its own, or exact's tokens for `live`."""
    return ctx.path("stores", "exact" if name == LIVE else name)


def check_available(names: list[str]) -> None:
    """Refuses rows this checkout cannot run, before hours of training."""
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise ValueError(f"unknown profile(s) {unknown}; use some of {sorted(ROWS)}")
    if "exact" not in names:
        raise ValueError(
            "--profiles must include exact: the goals are measured against it "
            "(and live students read its tokens)"
        )
    stored = [n for n in names if n != LIVE]
    missing = sorted({PROFILES[n].store_profile for n in stored} - set(store_profiles.PROFILES))
    if missing:
        raise ValueError(
            f"store profile(s) {missing} are not in this checkout's store.profiles; "
            f"drop them from --profiles or merge the branch that adds them"
        )
    sampled = [n for n in stored if PROFILES[n].samples]
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
        "teacher_fingerprint": info["manifest"]["schema"]["teacher"]["fingerprint"],
    }


def train_and_score(ctx, name: str, method: str, seed: int) -> dict:
    """One student of row NAME: trained and scored once; returns its numbers."""
    run = run_name(name, method, seed)
    done = _once(
        ctx,
        f"train_{run}",
        lambda: demo_stages.train_run(
            ctx,
            "students",
            method,
            ctx.path("runs", run),
            student_store(ctx, name),
            ctx.size.student_budget,
            f"seed={seed}",
            *student_sets(ctx, name),
        ),
    )
    _once(ctx, f"eval_{run}", lambda: demo_stages.evaluate_heldout(ctx, run))
    r = demo_results.load_run(ctx, run)
    with open(ctx.path("runs", run, "final.json"), encoding="utf-8") as f:
        teacher = json.load(f).get("teacher")  # Only a live-teacher run has one.
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
        "wall_s": r["wall_s"],
        "config": r["config"],
        "live_teacher": teacher,
    }


def _git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run_bench(
    size_name: str, out_dir: str, names: list[str], seeds: int, profile_seeds: int = 1
) -> dict:
    """Teacher (cached) → one store per profile → students → OUT/profile_quality.json."""
    check_available(names)
    refs = references(names)
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: {' and '.join(refs)} need at least one seed per method")
    if not 1 <= profile_seeds <= seeds:
        raise ValueError(
            f"--profile-seeds {profile_seeds} must be in [1, --seeds={seeds}]: "
            f"each profile seed is paired with {' and '.join(refs)}'s student of that seed"
        )
    out_dir = os.path.abspath(out_dir)
    demo.run_demo(size_name, out_dir, until="teacher")
    ctx = demo_stages.Context(size=get_size(size_name), out=out_dir)
    stores = {name: dump_profile(ctx, name) for name in names if name != LIVE}
    runs = {}
    for seed in range(seeds):  # Seed 0 of every row first: a partial run is still paired.
        for name in names:
            if seed < (seeds if name in refs else profile_seeds):
                for m in METHODS:
                    runs[run_name(name, m, seed)] = train_and_score(ctx, name, m, seed)
    differs = check_pairing(stores, runs, config_lib.ADDED_FIELDS)
    rows = {
        name: stores[name]
        if name != LIVE
        else {
            "teacher_flops_per_token": runs[run_name(LIVE, METHODS[0], 0)]["live_teacher"][
                "flops_per_token"
            ][0]
        }
        for name in names
    }
    result = {
        "size": size_name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "git_sha": _git_sha(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "student_flops_budget": ctx.size.student_budget,
        "k": ctx.size.k,
        "samples": {n: PROFILES[n].samples for n in names if n != LIVE},
        "about": {n: LIVE_ABOUT if n == LIVE else PROFILES[n].about for n in names},
        "stores": stores,
        "runs": runs,
        "profile_seeds": profile_seeds,
        "differs_from_exact": differs,
        **summarise(rows, runs, seeds, profile_seeds, {n: PROFILES[n].goal_nats for n in stores}),
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
        default=",".join(ROWS),
        help=f"comma-separated rows: store profiles, and {LIVE} (the live teacher, no store); "
        f"must include exact (default: all of {list(ROWS)})",
    )
    p.add_argument(
        "--seeds", type=int, default=2, help="seeds of each reference (live, exact) student"
    )
    p.add_argument(
        "--profile-seeds",
        type=int,
        default=1,
        help="seeds of each other row's students, paired with the references' (<= --seeds)",
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
