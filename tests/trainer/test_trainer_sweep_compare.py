"""trainer.sweep compares only like with like: a point is reused only with its full config
unchanged, an evaluation only on the asked store, points are ranked only on equal row sets,
and a sweep whose points all failed says so (issue 23 §1)."""

import json

import pytest
import trainer_testlib as tl

from trainer import sweep
from trainer.sweep import execute, reuse
from trainer.sweep import grid as grid_lib
from trainer.training import config as config_lib

GRID = {"loss.alpha": ["0.7", "0.9"]}


def _point(out, point, sets, heldout=None, final=True):
    """A finished point as the trainer (config.json, final.json) and evaluate (eval.json) leave it."""
    run_dir = out / grid_lib.point_name(point)
    run_dir.mkdir(parents=True)
    config = config_lib.load_config(
        f"{tl.CONFIG}:kd", [*sets, *(f"{k}={v}" for k, v in point.items()), f"run_dir={run_dir}"]
    )
    (run_dir / "config.json").write_text(config_lib.to_json(config))
    if final:
        (run_dir / "final.json").write_text(json.dumps({"loss": 2.0}))
    if heldout is not None:
        scores = [dict(s, task="heldout", seq_len=32, fingerprint="f") for s in heldout]
        (run_dir / "eval.json").write_text(
            json.dumps(
                {
                    "fingerprint": "f",
                    "tasks": {"heldout": scores[-1]},
                    "scores": {"heldout": scores},
                }
            )
        )
    return run_dir


def _no_runs(monkeypatch):
    monkeypatch.setattr(execute.subprocess, "Popen", lambda *a, **k: pytest.fail("ran a point"))


def test_a_changed_set_is_refused_naming_points_and_fields(tmp_path, monkeypatch, capsys):
    for point in grid_lib.points(GRID):
        _point(tmp_path, point, ["store.url=/s", "budget.value=1e11"])
    _no_runs(monkeypatch)
    # The same settings: every point is reused (nothing runs).
    execute.run_sweep(tl.CONFIG, str(tmp_path), GRID, sets=["store.url=/s", "budget.value=1e11"])
    rc = sweep.main(
        [
            "--config",
            tl.CONFIG,
            "--out",
            str(tmp_path),
            "--grid",
            "loss.alpha=0.7,0.9",
            "--set",
            "store.url=/s",
            "--set",
            "budget.value=1.2e11",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "2 of 2 points" in err[0] and "loss.alpha=0.7: budget.value: 1e+11 -> 1.2e+11" in err[0]
    assert "pass a new --out" in err[0]


def test_a_point_that_failed_before_any_checkpoint_reruns_with_the_fixed_settings(
    tmp_path, monkeypatch
):
    for point in grid_lib.points(GRID):
        _point(
            tmp_path, point, ["store.url=/wrong"], final=False
        )  # failed: no final, no checkpoints
    ran = []
    monkeypatch.setattr(execute, "_run_jobs", lambda todo, running, parallel: ran.extend(todo))
    execute.run_sweep(tl.CONFIG, str(tmp_path), GRID, sets=["store.url=/s"])
    assert len(ran) == 2


def test_store_derived_fields_do_not_count_as_changes_with_from_store(tmp_path):
    point = grid_lib.points(GRID)[0]
    run_dir = _point(tmp_path, point, ["store.url=/s", "data.from_store=True", "data.seq_len=64"])
    cfg = reuse.point_config(
        tl.CONFIG, str(tmp_path), point, ["store.url=/s", "data.from_store=True"]
    )
    assert reuse.config_changes(cfg, str(run_dir)) == []
    cfg = reuse.point_config(tl.CONFIG, str(tmp_path), point, ["store.url=/s", "data.seq_len=64"])
    assert reuse.config_changes(cfg, str(run_dir)) == ["data.from_store: True -> False"]


def test_an_evaluation_on_another_store_is_redone(tmp_path):
    point = grid_lib.points(GRID)[0]
    run_dir = _point(
        tmp_path,
        point,
        ["store.url=/s"],
        heldout=[{"log_ppl": 3.0, "n": 8, "rows": "aa", "store": "/other"}],
    )
    evaluate = {"tasks": ["heldout"], "store": "/h"}
    cmds = execute.point_commands(tl.CONFIG, str(run_dir), point, [], evaluate, "py")
    assert [stage for stage, _ in cmds] == ["eval"]
    evaluate["store"] = "/other"
    assert execute.point_commands(tl.CONFIG, str(run_dir), point, [], evaluate, "py") == []
    evaluate["store"] = "file:///other/"  # how evaluate records it: the same store
    assert execute.point_commands(tl.CONFIG, str(run_dir), point, [], evaluate, "py") == []


def test_points_on_other_rows_are_shown_not_ranked(tmp_path, monkeypatch):
    pts = grid_lib.points({"loss.alpha": ["0.5", "0.7", "0.9"]})
    full = {"n": 139, "rows": "f" * 16}
    _point(tmp_path, pts[0], ["store.url=/s"], heldout=[dict(full, log_ppl=4.80)])
    _point(tmp_path, pts[1], ["store.url=/s"], heldout=[dict(full, log_ppl=4.76)])
    # Evaluated with --limit 100 only: lower log-ppl, but not on the same rows.
    _point(
        tmp_path, pts[2], ["store.url=/s"], heldout=[{"n": 100, "rows": "1" * 16, "log_ppl": 4.50}]
    )
    _no_runs(monkeypatch)
    rows = execute.run_sweep(
        tl.CONFIG, str(tmp_path), {"loss.alpha": ["0.5", "0.7", "0.9"]}, sets=["store.url=/s"]
    )
    assert [(r["settings"]["loss.alpha"], r["ranked"]) for r in rows] == [
        (0.7, True),
        (0.5, True),
        (0.9, False),
    ]
    assert (
        "not ranked: heldout over n=100 rows 11111111, the ranked points over n=139 rows ffffffff"
        in rows[2]["status"]
    )
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[4].startswith("| 1 | 0.7 | 4.76 |") and table[6].startswith("| – | 0.9 | 4.5 |")


def test_every_point_failed_is_reported_as_failures(tmp_path, monkeypatch):
    for point in grid_lib.points(GRID):
        run_dir = _point(tmp_path, point, ["store.url=/s"], final=False)
        (run_dir / "train.log").write_text("error: store /s does not exist\n")
    # They fail again.
    monkeypatch.setattr(execute, "_run_jobs", lambda todo, running, parallel: None)
    evaluate = {"tasks": ["heldout"], "store": "/h"}
    rows = execute.run_sweep(
        tl.CONFIG, str(tmp_path), GRID, sets=["store.url=/s"], evaluate=evaluate
    )
    assert all(r["status"] == "failed: error: store /s does not exist" for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("Not ranked: every point failed to train (2 of 2)")
    assert "--evaluate heldout" not in summary.split("\n")[0]
