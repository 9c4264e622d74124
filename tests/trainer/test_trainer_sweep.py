"""scripts/sweep.py: grid expansion, resumability (finished points skipped), table."""
import json
import os

import pytest

import trainer_testlib as tl
from scripts import sweep


def test_grid_points_and_names():
    grid = sweep.parse_grid(["optim.lr=1e-4,4e-4", "loss.tau=0.5,1"])
    pts = sweep.points(grid)
    assert len(pts) == 4 and pts[0] == {"loss.tau": "0.5", "optim.lr": "1e-4"}
    assert sweep.point_name(pts[0]) == "loss.tau=0.5,optim.lr=1e-4"
    with pytest.raises(sweep.SweepError, match="key=v1,v2"):
        sweep.parse_grid(["optim.lr"])


def test_finished_points_are_skipped_and_summarised(tmp_path, monkeypatch):
    grid = {"optim.lr": ["1e-3", "3e-3"]}
    for i, point in enumerate(sweep.points(grid)):
        run_dir = tmp_path / sweep.point_name(point)
        run_dir.mkdir()
        (run_dir / "final.json").write_text(json.dumps({"loss": 2.0 - i, "nll": 3.0}))
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: pytest.fail("re-ran"))
    rows = sweep.run_sweep(tl.CONFIG, str(tmp_path), grid)
    assert [r["status"] for r in rows] == ["done", "done"]
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0] == "| optim.lr | loss | nll | status |"
    assert table[2].startswith("| 3e-3 | 1 |")  # sorted by final loss


@pytest.mark.slow
def test_sweep_runs_points(tmp_path):
    store = tl.make_store(tmp_path / "store", num_rows=16)
    config = tl.tiny_config("kd", store, tmp_path / "x", steps=3)
    rows = sweep.run_sweep(f"{tl.CONFIG}:kd", str(tmp_path / "sw"),
                           {"loss.tau": ["0.5", "1.0"]},
                           sets=[f"store.url={store}", "budget.unit=flops",
                                 f"budget.value={config.budget.value!r}"], parallel=2)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(r["global_step"] == 3 for r in rows)
    assert os.path.exists(tmp_path / "sw" / "summary.md")
