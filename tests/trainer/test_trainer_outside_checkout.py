"""The README's train / evaluate / sweep / report commands, run as a user would:
from an empty directory outside the checkout, with relative paths only."""

import json
import os
import subprocess
import sys

import trainer_testlib as tl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cwd, *args, timeout=600):
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


def test_readme_paths_from_an_empty_directory(tmp_path):
    work = tmp_path / "user"
    work.mkdir()
    assert not str(work).startswith(REPO)
    tl.make_store(work / "data" / "store", num_rows=16)
    tl.make_store(work / "data" / "heldout", num_rows=4, k=0, layers=())
    steps = tl.tiny_config("kd", "s", "r", steps=2).budget.value
    budget = ["--set", "budget.unit=flops", "--set", f"budget.value={steps!r}"]
    py = sys.executable

    _run(
        work,
        py,
        "-m",
        "trainer",
        "--config",
        "tiny:kd",
        "--set",
        "store.url=data/store",
        "--set",
        "run_dir=runs/kd",
        *budget,
    )
    assert (work / "runs" / "kd" / "export" / "metadata.json").exists()
    recorded = json.loads((work / "runs" / "kd" / "config.json").read_text())
    assert recorded["store"]["url"] == str(work / "data" / "store")  # resolved once, here

    # The launcher resolves the user's paths here, not in the checkout (it used to cd there).
    shown = _run(
        work,
        os.path.join(REPO, "scripts", "train.sh"),
        "data/store",
        "runs/kd2",
        "kd",
        "tiny",
        "--print-config",
    ).stdout
    assert json.loads(shown)["run_dir"] == str(work / "runs" / "kd2")

    out = _run(
        work,
        py,
        "-m",
        "trainer.evaluate",
        "--checkpoint",
        "runs/kd",
        "--tasks",
        "heldout",
        "--store",
        "data/heldout",
        "--json",
    ).stdout
    assert json.loads(out)["tasks"]["heldout"]["log_ppl"] > 0
    assert (work / "runs" / "kd" / "eval.json").exists()

    _run(
        work,
        py,
        "-m",
        "trainer.sweep",
        "--config",
        "tiny:kd",
        "--out",
        "sweeps/kd",
        "--grid",
        "loss.alpha=0.7,0.9",
        "--set",
        "store.url=data/store",
        *budget,
        "--evaluate",
        "heldout",
        "--eval-store",
        "data/heldout",
    )
    rows = json.loads((work / "sweeps" / "kd" / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"]
    assert rows[0]["log_ppl"] <= rows[1]["log_ppl"]

    _run(work, py, "-m", "trainer.report", "sweeps/kd", "--out", "report")
    assert "Best run per method" in (work / "report" / "report.md").read_text()
