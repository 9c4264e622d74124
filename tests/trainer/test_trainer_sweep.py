"""trainer.sweep: grid expansion, resumability, ranking by held-out log-ppl, errors."""

import json
import os

import pytest
import trainer_testlib as tl

from trainer import sweep
from trainer.sweep import execute
from trainer.sweep import grid as grid_lib
from trainer.training import config as config_lib


def test_grid_points_and_names():
    grid = grid_lib.parse_grid(["optim.lr=1e-4,4e-4", "loss.tau=0.5,1"])
    pts = grid_lib.points(grid)
    assert len(pts) == 4 and pts[0] == {"loss.tau": "0.5", "optim.lr": "1e-4"}
    assert grid_lib.point_name(pts[0]) == "loss.tau=0.5,optim.lr=1e-4"
    with pytest.raises(grid_lib.SweepError, match="key=v1,v2"):
        grid_lib.parse_grid(["optim.lr"])


def _finished_point(out, point, loss, log_ppl):
    run_dir = out / grid_lib.point_name(point)
    run_dir.mkdir(parents=True)
    config = config_lib.load_config(
        f"{tl.CONFIG}:kd",
        [f"{k}={v}" for k, v in point.items()] + [f"run_dir={run_dir}", "store.url=/s"],
    )
    (run_dir / "config.json").write_text(config_lib.to_json(config))
    (run_dir / "final.json").write_text(json.dumps({"loss": loss, "nll": 3.0}))
    if log_ppl is not None:
        (run_dir / "eval.json").write_text(
            json.dumps({"fingerprint": "f", "tasks": {"heldout": {"log_ppl": log_ppl, "n": 4}}})
        )


def test_finished_points_are_skipped_and_ranked_by_heldout(tmp_path, monkeypatch):
    # Lowest final training loss (α=0.9) is NOT the best held-out point: ranking by
    # training loss across α would put the wrong point first.
    grid = {"loss.alpha": ["0.7", "0.9"], "loss.tau": ["1.0"]}
    pts = grid_lib.points(grid)
    _finished_point(tmp_path, pts[0], loss=2.5, log_ppl=3.1)
    _finished_point(tmp_path, pts[1], loss=1.5, log_ppl=3.4)
    monkeypatch.setattr(execute.subprocess, "Popen", lambda *a, **k: pytest.fail("re-ran"))
    rows = execute.run_sweep(
        tl.CONFIG,
        str(tmp_path),
        grid,
        sets=["store.url=/s"],
        evaluate={"tasks": ["heldout"], "store": "/h"},
    )
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["settings"] for r in rows] == [{"loss.alpha": 0.7}, {"loss.alpha": 0.9}]
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0].startswith("Ranked by held-out log-perplexity")
    assert table[2] == "| rank | loss.alpha | heldout log-ppl | final loss | final nll | status |"
    assert table[4].startswith("| 1 | 0.7 | 3.1 | 2.5 |")


def test_unevaluated_points_are_not_ranked(tmp_path, monkeypatch):
    grid = {"loss.alpha": ["0.7", "0.9"]}
    for point, loss in zip(grid_lib.points(grid), (2.5, 1.5)):
        _finished_point(tmp_path, point, loss=loss, log_ppl=None)
    monkeypatch.setattr(execute.subprocess, "Popen", lambda *a, **k: pytest.fail("re-ran"))
    rows = execute.run_sweep(tl.CONFIG, str(tmp_path), grid, sets=["store.url=/s"])
    assert [r["settings"]["loss.alpha"] for r in rows] == [0.7, 0.9]  # grid order
    assert (tmp_path / "summary.md").read_text().startswith("Not ranked")


def test_evaluate_command_of_a_point(tmp_path):
    cmds = execute.point_commands(
        "tiny:kd",
        str(tmp_path / "p"),
        {"loss.tau": "1"},
        ["a=1"],
        {"tasks": ["heldout"], "store": "h", "tokenizer": None},
        "py",
    )
    assert [stage for stage, _ in cmds] == ["train", "eval"]
    assert cmds[1][1] == [
        "py",
        "-m",
        "trainer.evaluate",
        "--checkpoint",
        str(tmp_path / "p"),
        "--tasks",
        "heldout",
        "--store",
        "h",
    ]


def test_method_typo_is_named(tmp_path, capsys):
    rc = sweep.main(
        [
            "--config",
            f"{tl.CONFIG}:hdlf",
            "--out",
            str(tmp_path),
            "--paper",
            "--set",
            "store.url=/s",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(
        "error: method 'hdlf' (from --config tiny:hdlf) is not a method; use "
        "one of ['hldc', 'hldf', 'kd', 'nll', 'opd', 'oprd']"
    )


def test_bad_override_fails_once_before_any_point(tmp_path, capsys):
    rc = sweep.main(
        [
            "--config",
            tl.CONFIG,
            "--out",
            str(tmp_path / "sw"),
            "--grid",
            "optim.lrr=1,2",
            "--set",
            "store.url=/s",
        ]
    )
    assert rc == 2 and "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "sw")


def test_ctrl_c_waits_for_the_points_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    waited = []

    class Proc:
        def wait(self, timeout):
            waited.append(timeout)

    def interrupted(todo, running, parallel):
        running.append({"proc": Proc()})
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "_run_jobs", interrupted)
    rc = sweep.main(
        [
            "--config",
            tl.CONFIG,
            "--out",
            str(tmp_path),
            "--grid",
            "loss.tau=1,2",
            "--set",
            "store.url=/s",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        rc == 130
        and waited
        and err.splitlines()
        == [
            "interrupted; the running points saved checkpoints; re-run the same command to "
            "continue the sweep"
        ]
    )


@pytest.mark.slow
def test_sweep_runs_points(tmp_path):
    store = tl.make_store(tmp_path / "store", num_rows=16)
    config = tl.tiny_config("kd", store, tmp_path / "x", steps=3)
    rows = execute.run_sweep(
        f"{tl.CONFIG}:kd",
        str(tmp_path / "sw"),
        {"loss.tau": ["0.5", "1.0"]},
        sets=[f"store.url={store}", "budget.unit=flops", f"budget.value={config.budget.value!r}"],
        parallel=2,
        evaluate={"tasks": ["heldout"], "store": store},
    )
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(r["global_step"] == 3 and r["log_ppl"] > 0 for r in rows)
    assert os.path.exists(tmp_path / "sw" / "summary.md")


def test_paper_p1_grid_follows_the_student_size():
    # docs/DESIGN.md §1: P1 ∈ {1%, 5%} for the 123M student, {1%, 4%} for the 735M one.
    assert grid_lib.paper_grid("gemma3_270m:hldf")["hldf.p1"] == ["0.01", "0.05"]
    assert grid_lib.paper_grid("gemma3_1b:hldf")["hldf.p1"] == ["0.01", "0.04"]
    assert "hldf.p1" not in grid_lib.paper_grid("gemma3_1b:kd")


def test_extended_grid_weighs_gamma_by_distance_and_paper_grid_stays_the_papers():
    # The paper's HLDC grid is unchanged: γ ∈ {0.1, 0.05}, its mean-over-D reduction (default).
    assert grid_lib.paper_grid("gemma3_270m:hldc")["loss.gamma"] == ["0.1", "0.05"]
    assert "loss.hidden_reduction" not in grid_lib.paper_grid("gemma3_270m:hldc")
    ext = grid_lib.extended_grid("gemma3_270m:hldc")
    assert ext == {"loss.hidden_reduction": ["sum"], "loss.gamma": ["0.1", "0.3", "1.0", "3.0"]}
    points = grid_lib.points({**grid_lib.paper_grid("gemma3_270m:hldc"), **ext})
    assert len(points) == 3 * 2 * 2 * 4 and {p["loss.hidden_reduction"] for p in points} == {"sum"}
    with pytest.raises(grid_lib.SweepError, match="--extended covers .*hldc.* not 'kd'"):
        grid_lib.extended_grid("gemma3_270m:kd")
