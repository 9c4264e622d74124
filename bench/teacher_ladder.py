"""Teacher-strength ladder: how much a KD student gains from teachers of several strengths.

    .venv/bin/python bench/teacher_ladder.py [--size cpu|ci] [--budgets 0.25,0.5,1,2]
        [--alphas 0.2,0.5,0.7] [--seeds 2] [--signal sampled|topk] [--samples 12]
        [--out bench/results/teacher_ladder_<size>] [--report-only]

The question (arXiv 2605.23857): with the right mixing weight α, does a
*weaker* teacher still help a student, and where does it stop helping? The
demo's chain (`scripts.demo` stages corpus → tokenizer → spine → teacher,
cached in OUT, so the 1× teacher *is* the demo teacher) is reused; teachers at
`--budgets` × the demo teacher's FLOPs are pre-trained with NLL on the same
tokens, each scored on every held-out row and dumped (top-k and `--samples`
sampled draws in one store, as the demo dumps; where the demo's own dump has
finished in OUT, the 1× teacher's store is OUT/store). From each store, KD students
at every α in `--alphas` train at the demo's student budget, next to NLL
students (no teacher), `--seeds` seeds each; every student is scored on every
held-out row.

Pieces run seed-major, and within seed 0 teacher by teacher in the order
of --budgets (the teacher, then its students), so a ladder cut short is
still a ladder: complete rows for the teachers it reached, one seed. The
table and plot sort teachers by budget whatever the run order. Each finished piece is
recorded in OUT/teacher_ladder.json with its wall time, UTC time and git sha;
a rerun skips recorded pieces (and the trainer/dump resume an interrupted
one), so the ladder can run in pieces. Prints a markdown table and writes
OUT/teacher_ladder.png (student log-ppl vs teacher log-ppl, one line per α,
NLL's band for reference).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import demo, demo_results, demo_stages  # noqa: E402
from scripts.demo_sizes import get_size  # noqa: E402
from trainer.training import config as config_lib  # noqa: E402

SIGNALS = ("sampled", "topk")


def teacher_run(budget: float) -> str:
    """Run name of the teacher at `budget` × the demo teacher's FLOPs (1×: the demo's own)."""
    return "teacher" if budget == 1 else f"teacher_x{budget:g}"


def student_run(budget: float | None, alpha: float | None, seed: int) -> str:
    """Run name of a ladder student; budget None: the NLL student (no teacher)."""
    if budget is None:
        return f"ladder_nll_s{seed}"
    return f"ladder_t{budget:g}_a{alpha:g}_s{seed}"


def plan(budgets: list[float], alphas: list[float], seeds: int, late=frozenset()) -> list[tuple]:
    """The pieces in run order, so that a ladder cut short is still a ladder.

    Seed 0 first: per teacher in the order of `budgets` (e.g. the most telling
    first) the teacher and its KD students at every α, with NLL after the first teacher
    (it reads the tokens of that teacher's store: every store holds the same
    rows); then the other seeds. Pieces in `late` (the ones the demo's own runs
    may provide, see `demo_twin`) move to the end of their seed, so a demo
    running beside the ladder has had time to finish them.

    Returns:
        [("teacher", budget) | ("nll", seed) | ("kd", budget, alpha, seed)].
    """
    per_seed = []
    for seed in range(seeds):
        pieces = []
        for b in budgets:
            pieces += [("teacher", b)] * (seed == 0) + [("nll", seed)] * (b == budgets[0])
            pieces += [("kd", b, a, seed) for a in alphas]
        per_seed.append([p for p in pieces if p not in late] + [p for p in pieces if p in late])
    return [p for pieces in per_seed for p in pieces]


def demo_twin(ctx, piece: tuple, signal: str, samples: int) -> str | None:
    """The demo's own finished student run (OUT/runs/nll_sS or kd_sS) that *is* this piece.

    The 1× teacher is the demo's and its store holds the same bytes as the demo's
    store (same dump command), so the demo's NLL students, and its KD students at the
    demo config's α and signal, are the ladder's pieces trained under another name.
    Their config.json is checked field by field (method, seed, budget, model, α,
    signal, S), never assumed; None when the demo has not finished such a run.
    """
    if piece[0] == "nll":
        name, want = f"nll_s{piece[1]}", {"method": "nll", "seed": piece[1]}
    elif piece[0] == "kd" and piece[1] == 1:
        name = f"kd_s{piece[3]}"
        want = {"method": "kd", "seed": piece[3], "loss.alpha": piece[2], "loss.signal": signal}
        if signal == "sampled":
            want["data.samples"] = samples
    else:
        return None
    run_dir = ctx.path("runs", name)
    if not all(
        os.path.exists(os.path.join(run_dir, f)) for f in ("final.json", "eval.json", "config.json")
    ):
        return None
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    want.update({"budget.value": ctx.size.student_budget, "model.name": ctx.models["student"]})

    def get(dotted):
        node = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return name if all(get(k) == v for k, v in want.items()) else None


def piece_key(piece: tuple) -> str:
    """The name a piece is recorded under in teacher_ladder.json (its run directory's name)."""
    if piece[0] == "teacher":
        return teacher_run(piece[1])
    if piece[0] == "nll":
        return student_run(None, None, piece[1])
    return student_run(*piece[1:])


def signal_sets(signal: str, samples: int) -> list[str]:
    """Trainer overrides that make the KD term read `signal` from the ladder's stores."""
    if signal == "sampled":
        return ["loss.signal=sampled", f"data.samples={samples}"]
    return ["loss.signal=topk"]


def teacher_store(ctx, budget: float, samples: int) -> str:
    """The store holding the signal of the teacher at `budget`.

    The 1× teacher is the demo's, and the demo's dump stage writes its signal with
    the very command the ladder would run (same teacher, rows, k and `samples`): when
    that stage has finished in OUT and the ladder has not dumped the 1× teacher itself,
    the ladder reads OUT/store instead of dumping the same bytes again.
    """
    own = ctx.path("stores", teacher_run(budget))
    demo_dumped = os.path.exists(ctx.path(".done", "dump")) and samples == ctx.size.samples
    if budget == 1 and demo_dumped and not os.path.exists(own):
        return ctx.path("store")
    return own


def _heldout(ctx, run: str) -> tuple[float, int | None]:
    ev = demo_results.load_run(ctx, run)["eval"]["heldout"]
    return ev["log_ppl"], ev.get("n")


def run_piece(ctx, piece: tuple, signal: str, samples: int, nll_store: str) -> dict:
    """Runs one piece (train [+ dump] + score); returns what the ladder records of it.

    `nll_store` is the store NLL students read (tokens only: the same rows as every
    teacher's store, so they see the same data as the KD students).
    """
    if piece[0] == "teacher":
        budget = piece[1]
        name, store = teacher_run(budget), teacher_store(ctx, budget, samples)
        if budget != 1:  # The 1× teacher is the demo's, trained by demo.run_demo.
            demo_stages.train_run(
                ctx,
                "ladder",
                "teacher",
                ctx.path("runs", name),
                ctx.path("tokens_store"),
                budget * ctx.size.teacher_budget,
            )
        demo_stages.evaluate_heldout(ctx, name)
        if store != ctx.path("store"):  # Not the demo's own dump (teacher_store).
            demo_stages.run(
                ctx,
                "ladder",
                *demo_stages.teacher_dump_args(
                    ctx, store, ctx.size.k, samples=samples, teacher_run=name
                ),
            )
        log_ppl, n = _heldout(ctx, name)
        return {
            "kind": "teacher",
            "budget": budget,
            "flops": budget * ctx.size.teacher_budget,
            "store": store,
            "log_ppl": log_ppl,
            "heldout_rows": n,
        }
    if piece[0] == "nll":
        seed, budget, alpha, method, sets, store = piece[1], None, None, "nll", [], nll_store
    else:
        _, budget, alpha, seed = piece
        method, store = "kd", teacher_store(ctx, budget, samples)
        sets = [f"loss.alpha={alpha}", *signal_sets(signal, samples)]
    name = student_run(budget, alpha, seed)
    demo_stages.train_run(
        ctx,
        "ladder",
        method,
        ctx.path("runs", name),
        store,
        ctx.size.student_budget,
        f"seed={seed}",
        *sets,
    )
    demo_stages.evaluate_heldout(ctx, name)
    log_ppl, n = _heldout(ctx, name)
    return {
        "kind": method,
        "teacher_budget": budget,
        "alpha": alpha,
        "seed": seed,
        "log_ppl": log_ppl,
        "heldout_rows": n,
    }


def summarise(pieces: dict, budgets: list[float], alphas: list[float]) -> dict:
    """Per teacher and α: mean / spread / seeds of the students, and Δ vs NLL's mean.

    Args:
        pieces: {piece key: run_piece result}, possibly a partial ladder.
        budgets, alphas: the ladder's axes (cells with no finished seed are None).

    Returns:
        {"nll": {"log_ppl": [..], "mean", "spread"} | None,
         "teachers": [{"budget", "log_ppl", "kd": {alpha: cell | None}}]}, where a cell is
        {"log_ppl": [per seed], "mean", "spread", "delta_vs_nll", "beats_nll"}.
    """

    def stats(values):
        if not values:
            return None
        return {
            "log_ppl": values,
            "mean": sum(values) / len(values),
            "spread": max(values) - min(values),
        }

    nll = stats([p["log_ppl"] for p in pieces.values() if p["kind"] == "nll"])
    teachers = []
    for b in sorted(budgets):
        t = pieces.get(teacher_run(b))
        row = {"budget": b, "log_ppl": t["log_ppl"] if t else None, "kd": {}}
        for a in alphas:
            cell = stats(
                [
                    p["log_ppl"]
                    for p in sorted(pieces.values(), key=lambda p: p.get("seed", 0))
                    if p["kind"] == "kd" and p["teacher_budget"] == b and p["alpha"] == a
                ]
            )
            if cell and nll:
                cell["delta_vs_nll"] = cell["mean"] - nll["mean"]
                # "Beats" only beyond noise: more than the larger of the two seed spreads.
                cell["beats_nll"] = -cell["delta_vs_nll"] > max(cell["spread"], nll["spread"])
            row["kd"][f"{a:g}"] = cell
        teachers.append(row)
    return {"nll": nll, "teachers": teachers}


def _cell(cell: dict | None) -> str:
    if cell is None:
        return "–"
    seeds = " / ".join(f"{v:.4f}" for v in cell["log_ppl"])
    delta = (
        f" (Δ {cell['delta_vs_nll']:+.4f}{'*' if cell['beats_nll'] else ''})"
        if "delta_vs_nll" in cell
        else ""
    )
    return seeds + delta


def markdown_table(summary: dict, alphas: list[float]) -> str:
    """One row per teacher (and NLL's), one column per α: seeds' log-ppl and Δ vs NLL."""
    md = [
        "| teacher | teacher log-ppl | " + " | ".join(f"KD α={a:g}" for a in alphas) + " |",
        "|---|---|" + "---|" * len(alphas),
    ]
    nll = summary["nll"]
    md.append(
        "| none (NLL student) | – | "
        + " | ".join(
            [("–" if nll is None else " / ".join(f"{v:.4f}" for v in nll["log_ppl"]))] * len(alphas)
        )
        + " |"
    )
    for row in summary["teachers"]:
        t = "–" if row["log_ppl"] is None else f"{row['log_ppl']:.4f}"
        md.append(
            f"| {row['budget']:g}× demo teacher | {t} | "
            + " | ".join(_cell(row["kd"][f"{a:g}"]) for a in alphas)
            + " |"
        )
    return "\n".join(md)


def plot(summary: dict, alphas: list[float], path: str) -> str | None:
    """Student log-ppl vs teacher log-ppl, one line per α, NLL's mean and spread as a band."""
    import matplotlib  # Local: only the plot needs it.

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in alphas:
        pts = [
            (r["log_ppl"], r["kd"][f"{a:g}"])
            for r in summary["teachers"]
            if r["log_ppl"] is not None and r["kd"][f"{a:g}"] is not None
        ]
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ax.errorbar(
            xs,
            [c["mean"] for _, c in pts],
            yerr=[c["spread"] / 2 for _, c in pts],
            marker="o",
            capsize=3,
            label=f"KD α={a:g}",
        )
    nll = summary["nll"]
    if nll is not None:
        ax.axhline(nll["mean"], color="k", ls="--", lw=1, label="NLL student (no teacher)")
        ax.axhspan(min(nll["log_ppl"]), max(nll["log_ppl"]), color="k", alpha=0.08)
    ax.set_xlabel("teacher held-out log-ppl (lower: stronger teacher)")
    ax.set_ylabel("student held-out log-ppl")
    ax.set_title("Teacher-strength ladder (bars: seed spread)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _git_sha() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _save(path: str, state: dict) -> None:
    """Atomic write, so a kill mid-write never loses the recorded pieces."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise ValueError(
            f"{flag} {text!r}: give comma-separated numbers, e.g. 0.25,0.5,1,2"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} {text!r}: give positive numbers, e.g. 0.25,0.5,1,2")
    return values


def run_ladder(
    size_name: str,
    out_dir: str,
    budgets: list[float],
    alphas: list[float],
    seeds: int,
    signal: str = "sampled",
    samples: int = 12,
    report_only: bool = False,
) -> dict:
    """Runs (or resumes) the ladder; returns the state written to OUT/teacher_ladder.json.

    report_only: run nothing; table, plot and JSON summary from the pieces recorded so far
    (a ladder stopped part-way, or still running in another process).
    """
    if signal not in SIGNALS:
        raise ValueError(f"--signal {signal!r}: use one of {list(SIGNALS)}")
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: need at least one seed")
    if not all(0 < a <= 1 for a in alphas):
        raise ValueError(f"--alphas {alphas}: each α must be in (0, 1] (NLL is always trained)")
    if signal == "sampled" and not 1 <= samples <= 255:
        raise ValueError(f"--samples {samples}: the sampled signal needs 1..255 draws")
    size = get_size(size_name)
    out_dir = os.path.abspath(out_dir)
    json_path = os.path.join(out_dir, "teacher_ladder.json")
    t_start = time.time()
    if report_only and not os.path.exists(json_path):
        raise ValueError(f"--report-only: {json_path} does not exist; run the ladder first")
    if not report_only:
        demo.run_demo(size_name, out_dir, until="teacher")
    ctx = demo_stages.Context(size=size, out=out_dir)
    state = {"pieces": {}}
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            state = json.load(f)
    settings = {
        "size": size_name,
        "signal": signal,
        "samples": samples,
        "k": size.k,
        "teacher_flops_1x": size.teacher_budget,
        "student_flops": size.student_budget,
    }
    if state.get("settings", settings) != settings:
        raise ValueError(
            f"{json_path} was made with {state['settings']}, not {settings}; "
            f"use another --out or the same settings"
        )
    state["settings"] = settings
    demo_loss = config_lib.load_config(f"{size.config}:kd").loss
    late = {
        p
        for p in plan(budgets, alphas, seeds)
        if p[0] == "nll"
        or (p[0] == "kd" and p[1] == 1 and p[2] == demo_loss.alpha and signal == demo_loss.signal)
    }
    for piece in [] if report_only else plan(budgets, alphas, seeds, frozenset(late)):
        key = piece_key(piece)
        if key in state["pieces"]:
            print(f"[teacher_ladder] {key}: done earlier, skipped", flush=True)
            continue
        t0 = time.time()
        twin = demo_twin(ctx, piece, signal, samples)
        if twin is not None:
            print(f"[teacher_ladder] {key}: the demo's run {twin} (same settings)", flush=True)
            result = {
                "kind": piece[0],
                "teacher_budget": None if piece[0] == "nll" else 1.0,
                "alpha": None if piece[0] == "nll" else piece[2],
                "seed": piece[-1],
                "log_ppl": _heldout(ctx, twin)[0],
                "demo_run": twin,
            }
        else:
            print(f"[teacher_ladder] {key} ({time.time() - t_start:.0f}s elapsed)", flush=True)
            result = run_piece(
                ctx, piece, signal, samples, nll_store=teacher_store(ctx, budgets[0], samples)
            )
        result.update(
            wall_s=round(time.time() - t0, 1),
            git_sha=_git_sha(),
            finished=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        state["pieces"][key] = result
        _save(json_path, state)
    summary = summarise(state["pieces"], budgets, alphas)
    state.update(
        summary=summary,
        budgets=budgets,
        alphas=alphas,
        seeds=seeds,
        date=datetime.datetime.now(datetime.UTC).isoformat(),
        git_sha=_git_sha(),
        machine=f"{platform.node()} ({os.cpu_count()} CPUs)",
        pieces_wall_s=round(sum(p["wall_s"] for p in state["pieces"].values()), 1),
        this_call_wall_s=round(time.time() - t_start, 1),
        plot=plot(summary, alphas, os.path.join(out_dir, "teacher_ladder.png")),
    )
    _save(json_path, state)
    return state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", default="cpu", help="demo size: cpu | ci | gpu (scripts/demo_sizes.py)"
    )
    p.add_argument(
        "--budgets",
        default="0.25,0.5,1,2",
        help="teacher FLOPs as multiples of the demo teacher's (1: the demo teacher)",
    )
    p.add_argument("--alphas", default="0.2,0.5,0.7", help="KD mixing weights α")
    p.add_argument("--seeds", type=int, default=2, help="seeds of every student")
    p.add_argument(
        "--signal", default="sampled", help="KD signal: sampled (the demo's default) | topk"
    )
    p.add_argument(
        "--samples", type=int, default=12, help="sampled draws per position in each dump"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (resumable; default bench/results/teacher_ladder_<size>)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: summarise the pieces recorded in OUT so far",
    )
    args = p.parse_args(argv)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"teacher_ladder_{args.size}"
    )
    try:
        get_size(args.size)
        budgets = _parse_floats(args.budgets, "--budgets")
        alphas = _parse_floats(args.alphas, "--alphas")
        state = run_ladder(
            args.size, out, budgets, alphas, args.seeds, args.signal, args.samples, args.report_only
        )
    except ValueError as e:
        print(f"teacher_ladder: {e}", file=sys.stderr)
        return 2
    except (demo.StageFailed, demo_stages.CommandFailed) as e:
        print(f"teacher_ladder: {e}; rerun the same command to resume", file=sys.stderr)
        return 1
    print(markdown_table(state["summary"], state["alphas"]))
    print(
        f"\nΔ vs the NLL students' mean; * = better than NLL by more than the larger seed spread. "
        f"Pieces' wall time {state['pieces_wall_s']:.0f} s (this call {state['this_call_wall_s']:.0f} s)."
    )
    print(f"(JSON: {os.path.join(out, 'teacher_ladder.json')}; plot: {state['plot']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
