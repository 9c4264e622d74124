"""Running a sweep: each point's commands (train, then evaluate) as processes, N at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from trainer.sweep.grid import SweepInterrupted, point_name, points
from trainer.sweep.reuse import check_reuse, eval_done
from trainer.sweep.summary import markdown_table, summary_rows


def point_commands(config: str, run_dir: str, point: dict, sets, evaluate, python) -> list:
    """The commands a point still needs: training (unless finished), then evaluation."""
    commands = []
    if not os.path.exists(os.path.join(run_dir, "final.json")):
        cmd = [python, "-m", "trainer", "--config", config, "--set", f"run_dir={run_dir}"]
        for item in list(sets) + [f"{k}={v}" for k, v in point.items()]:
            cmd += ["--set", item]
        commands.append(("train", cmd))
    if evaluate and not eval_done(run_dir, evaluate["tasks"], evaluate.get("store")):
        cmd = [
            python,
            "-m",
            "trainer.evaluate",
            "--checkpoint",
            run_dir,
            "--tasks",
            ",".join(evaluate["tasks"]),
        ]
        for flag in ("store", "tokenizer", "task_dir"):
            if evaluate.get(flag):
                cmd += [f"--{flag.replace('_', '-')}", evaluate[flag]]
        commands.append(("eval", cmd))
    return commands


def run_sweep(
    config: str,
    out: str,
    grid: dict,
    sets=(),
    parallel: int = 1,
    python: str = sys.executable,
    evaluate: dict | None = None,
) -> list[dict]:
    """Runs every unfinished point (and its evaluation); returns the summary rows.

    Args:
        config: trainer config spec (shipped name or path, [:arg]).
        out: sweep directory (one sub-directory per point).
        grid: {config key: [values]}.
        sets: extra "key=value" overrides for every point.
        parallel: points run at the same time.
        python: interpreter for the trainer processes.
        evaluate: None, or {"tasks": [...], "store": URL, "tokenizer": PATH,
            "task_dir": DIR} for `python -m trainer.evaluate` after training.
    """
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    check_reuse(config, out, grid, sets)
    todo = []
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        commands = point_commands(config, run_dir, point, sets, evaluate, python)
        if commands:
            todo.append((point, run_dir, commands))
    running: list[dict] = []
    try:
        _run_jobs(todo, running, parallel)
    except KeyboardInterrupt:
        # The trainers got the same SIGINT (one process group): each checkpoints
        # and exits; wait for them so nothing is left writing behind our back.
        for job in running:
            try:
                job["proc"].wait(timeout=300)
            except subprocess.TimeoutExpired:
                job["proc"].kill()
        raise SweepInterrupted(
            "interrupted; the running points saved checkpoints; re-run "
            "the same command to continue the sweep"
        ) from None
    rows = summary_rows(out, grid, evaluate)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    table = markdown_table(rows, evaluate)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return rows


def _run_jobs(todo: list, running: list, parallel: int) -> None:
    """Keeps `parallel` point commands running until `todo` is done."""
    while todo or running:
        while todo and len(running) < parallel:
            point, run_dir, commands = todo.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            running.append(_start(point, run_dir, commands))
        # Free the first slot that finishes (not the oldest run), so short
        # points do not wait behind a long one.
        while not (finished := [r for r in running if r["proc"].poll() is not None]):
            time.sleep(0.5)
        for job in finished:
            running.remove(job)
            job["log"].close()
            code = job["proc"].returncode
            print(f"[sweep] {job['stage']:5s} {point_name(job['point'])} (exit {code})", flush=True)
            if code == 0 and job["rest"]:
                running.append(_start(job["point"], job["run_dir"], job["rest"]))


def _start(point: dict, run_dir: str, commands: list) -> dict:
    (stage, cmd), rest = commands[0], commands[1:]
    log = open(os.path.join(run_dir, f"{stage}.log"), "a", encoding="utf-8")
    print(f"[sweep] {stage:5s} {point_name(point)} start", flush=True)
    return {
        "proc": subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
        "log": log,
        "point": point,
        "run_dir": run_dir,
        "stage": stage,
        "rest": rest,
    }
