"""Hyper-parameter sweep: one run directory per grid point, then a summary table.

    python -m scripts.sweep --config trainer/configs/gemma3_270m.py:kd --out sweeps/kd \
        --paper --set store.url=/data/store --set budget.value=4 [--parallel 2]
    python -m scripts.sweep --config trainer/configs/tiny.py:hldc --out /tmp/sw \
        --grid optim.lr=1e-3,3e-3 --grid loss.gamma=0.1,0.05 --set store.url=S

Each point runs `python -m trainer` in its own process (N at a time with
--parallel), in OUT/<key=value,...>/. Finished points (final.json present)
are skipped, interrupted ones resume from their checkpoints, so re-running
the same command continues a sweep. OUT/summary.md holds a Markdown table of
the final loss terms; OUT/summary.json the same rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

# The paper's grid (DESIGN §1) per method; P1 is {1%, 5%} for the 123M student.
PAPER_GRID = {
    "nll": {"optim.lr": [1e-4, 4e-4, 16e-4]},
    "kd": {"optim.lr": [1e-4, 4e-4, 16e-4], "loss.tau": [0.5, 1.0], "loss.alpha": [0.7, 0.9]},
    "hldc": {"optim.lr": [1e-4, 4e-4, 16e-4], "loss.tau": [0.5, 1.0],
             "loss.alpha": [0.7, 0.9], "loss.gamma": [0.1, 0.05]},
    "hldf": {"optim.lr": [1e-4, 4e-4, 16e-4], "loss.tau": [0.5, 1.0],
             "loss.alpha": [0.7, 0.9], "hldf.p1": [0.01, 0.05]},
}
SUMMARY_KEYS = ("loss", "nll", "kd", "hidden_mse", "top1_agreement", "global_step",
                "cumulative_flops")


class SweepError(ValueError):
    """Bad sweep arguments."""


def parse_grid(items) -> dict:
    """["a.b=1,2", ...] -> {"a.b": ["1", "2"]} (values stay strings for --set)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SweepError(f"--grid {item!r} is not key=v1,v2; write e.g. "
                             f"--grid optim.lr=1e-4,4e-4")
        grid[key] = values.split(",")
    return grid


def points(grid: dict) -> list[dict]:
    """Cartesian product of the grid, in a stable order."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict) -> str:
    """Directory name of a point, e.g. 'loss.tau=0.5,optim.lr=0.0004'."""
    return ",".join(f"{k}={v}" for k, v in sorted(point.items())) or "default"


def run_sweep(config: str, out: str, grid: dict, sets=(), parallel: int = 1,
              python: str = sys.executable) -> list[dict]:
    """Runs every unfinished point; returns one summary row per point.

    Args:
        config: trainer config spec (path[:arg]).
        out: sweep directory (one sub-directory per point).
        grid: {config key: [values]}.
        sets: extra "key=value" overrides for every point.
        parallel: points run at the same time.
        python: interpreter for the trainer processes.
    """
    os.makedirs(out, exist_ok=True)
    todo, rows = [], []
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        if not os.path.exists(os.path.join(run_dir, "final.json")):
            todo.append((point, run_dir))
    running = []
    while todo or running:
        while todo and len(running) < parallel:
            point, run_dir = todo.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            cmd = [python, "-m", "trainer", "--config", config, "--set", f"run_dir={run_dir}"]
            for item in list(sets) + [f"{k}={v}" for k, v in point.items()]:
                cmd += ["--set", item]
            log = open(os.path.join(run_dir, "train.log"), "a", encoding="utf-8")
            print(f"[sweep] start {point_name(point)}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log,
                            point))
        # Free the first slot that finishes (not the oldest run), so short
        # points do not wait behind a long one.
        while not (finished := [r for r in running if r[0].poll() is not None]):
            time.sleep(0.5)
        for entry in finished:
            running.remove(entry)
            proc, log, point = entry
            log.close()
            print(f"[sweep] done  {point_name(point)} (exit {proc.returncode})", flush=True)
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        row = {"point": point_name(point), **point}
        final = os.path.join(run_dir, "final.json")
        if os.path.exists(final):
            with open(final, encoding="utf-8") as f:
                summary = json.load(f)
            row.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
            row["status"] = "done"
        else:
            row["status"] = "failed (see train.log)"
        rows.append(row)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    table = markdown_table(rows, sorted(grid))
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return rows


def markdown_table(rows: list[dict], grid_keys) -> str:
    """Markdown table: grid values, final loss terms, status (sorted by final loss)."""
    metric_keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
    cols = list(grid_keys) + metric_keys + ["status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    for row in sorted(rows, key=lambda r: r.get("loss", float("inf"))):
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """CLI; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="trainer config, path[:method]")
    parser.add_argument("--out", required=True, help="sweep directory")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable)")
    parser.add_argument("--paper", action="store_true",
                        help="add the paper's grid for the config's method")
    parser.add_argument("--set", action="append", default=[], help="override for every point")
    parser.add_argument("--parallel", type=int, default=1, help="points run at once")
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        if args.paper:
            from trainer.training.config import load_config
            method = load_config(args.config, args.set).method
            if method not in PAPER_GRID:
                raise SweepError(f"no paper grid for method {method!r}; use --grid")
            grid = {**{k: [repr(v) for v in vs] for k, vs in PAPER_GRID[method].items()}, **grid}
        if args.parallel < 1:
            raise SweepError(f"--parallel {args.parallel} must be >= 1")
        rows = run_sweep(args.config, args.out, grid, args.set, args.parallel)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
