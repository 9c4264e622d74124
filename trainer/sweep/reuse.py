"""When a sweep may reuse what is under --out: config identity of a point, held-out scores.

A point is reused only when its recorded config.json is the config it would run
with now (every field, not only the grid's); an evaluation only when its held-out
score is on the --eval-store asked for.
"""

from __future__ import annotations

import json
import os

from trainer.sweep.grid import SweepError, point_name, points
from trainer.training import config as config_lib
from trainer.training import eval_results

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


def heldout_scores(run_dir: str, tasks, store: str | None):
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


def eval_done(run_dir: str, tasks, store: str | None = None) -> bool:
    return heldout_scores(run_dir, tasks, store)[0]
