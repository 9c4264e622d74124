"""trainer.report on fake sweep run directories with hand-computed expectations."""

import json
import os

import pytest

from trainer import report
from trainer.report import compare, markdown, rundirs
from trainer.report.rundirs import ReportError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root,
    name,
    method,
    lr,
    tau=1.0,
    alpha=0.9,
    gamma=0.1,
    p1=0.01,
    log_ppl=None,
    errors=None,
    budget=1.0,
    seed=0,
    tail="bucket",
    k=32,
):
    path = root / name
    path.mkdir(parents=True)
    config = {
        "method": method,
        "model": {"name": "tiny"},
        "seed": seed,
        "run_dir": str(path),
        "data": {"k": k},
        "budget": {"unit": "ot", "value": budget},
        "optim": {"lr": lr},
        "loss": {"tau": tau, "alpha": alpha, "gamma": gamma, "tail": tail},
        "hldf": {"p1": p1},
    }
    (path / "config.json").write_text(json.dumps(config))
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, 4):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "phase": 1,
                        "loss": 5.0 / step,
                        "nll": 4.0 / step,
                        "cumulative_flops": 1e12 * step,
                    }
                )
                + "\n"
            )
    if log_ppl is not None:
        tasks = {"heldout": {"log_ppl": log_ppl, "tokens": 100}}
        for task, err in (errors or {}).items():
            tasks[task] = {"error": err, "acc": 1 - err, "n": 10}
        (path / "eval.json").write_text(json.dumps({"checkpoint": str(path), "tasks": tasks}))
    return str(path)


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    # KD grid: lr x tau.
    kd = {(1e-4, 0.5): 3.0, (1e-4, 1.0): 3.1, (4e-4, 0.5): 2.9, (4e-4, 1.0): 2.95}
    for (lr, tau), ppl in kd.items():
        make_run(
            root,
            f"kd_{lr}_{tau}",
            "kd",
            lr,
            tau=tau,
            log_ppl=ppl,
            errors={"hellaswag": 0.7, "piqa": 0.4},
        )
    # HLDC at the same (lr, tau) with two gammas: deltas KD - HLDC.
    make_run(root, "hldc_a", "hldc", 1e-4, tau=0.5, gamma=0.1, log_ppl=2.9)  # +0.10
    make_run(root, "hldc_b", "hldc", 1e-4, tau=0.5, gamma=0.05, log_ppl=3.05)  # -0.05
    make_run(
        root,
        "hldc_c",
        "hldc",
        4e-4,
        tau=1.0,
        gamma=0.1,
        log_ppl=2.85,  # +0.10
        errors={"hellaswag": 0.6, "piqa": 0.3, "lambada": 0.8},
    )
    make_run(root, "nll_1", "nll", 4e-4, log_ppl=3.2)  # pairs with both KD lr=4e-4 runs
    make_run(root, "not_evaluated", "hldf", 4e-4)
    return root


def test_best_and_pairs(sweep):
    runs = rundirs.load_runs([str(sweep)])
    assert len(runs) == 9
    best = {r.method: r.name for r in compare.best_per_method(runs)}
    assert best == {"kd": "kd_0.0004_0.5", "hldc": "hldc_c", "nll": "nll_1"}
    pairs = compare.kd_pairs(runs)
    deltas = sorted(round(kd.log_ppl - run.log_ppl, 6) for run, kd in pairs["hldc"])
    assert deltas == [-0.05, 0.1, 0.1]
    assert sorted(kd.name for _, kd in pairs["nll"]) == ["kd_0.0004_0.5", "kd_0.0004_1.0"]
    assert "hldf" not in pairs
    # The data (NLL) term is plotted: comparable across methods, unlike the total loss.
    assert runs[0].curve_key == "nll" and runs[0].curve == [(1e12, 4.0), (2e12, 2.0), (3e12, 4 / 3)]


def test_build_report_writes_markdown_and_pngs(sweep, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # Best-per-method table row of HLDC with its errors in percent. Only the fields that
    # differ between the runs name a setting (alpha is 0.9 everywhere). The mean is over
    # the tasks every row with errors has (KD's 2), not HLDC's own 3 (it was 56.7).
    assert (
        "| HLDC | hldc_c | gamma=0.1, lr=0.0004, tau=1 | 2.8500 | – |"
        " 60.0 | 30.0 | – | – | 80.0 | 45.0 |" in md
    )
    assert "mean err % (hellaswag, piqa)" in md
    # Only hldc_c has errors: vs its KD (70%, 40%) it has (60%, 30%) -> +10 points.
    assert "| HLDC | 3 | +0.0500 | -0.0500 | +0.1000 | 2/3 | +10.00 (1 pairs) | 0 |" in md
    assert "| NLL | 2 | -0.2750 |" in md and "| 0/2 | – | 0 |" in md
    assert "not_evaluated" in md
    for png in (
        "improvement_hldc.png",
        "scatter_hldc_vs_kd.png",
        "improvement_nll.png",
        "loss_vs_flops.png",
    ):
        assert f"]({png})" in md
        assert (out / png).read_bytes()[:8] == PNG_MAGIC


def test_budgets_are_not_mixed(tmp_path):
    make_run(tmp_path, "kd", "kd", 1e-4, log_ppl=3.0, budget=1.0)
    make_run(tmp_path, "hldc", "hldc", 1e-4, log_ppl=2.0, budget=2.0)
    runs = rundirs.load_runs([str(tmp_path / n) for n in ("kd", "hldc")])
    assert compare.kd_pairs(runs) == {}
    assert len(compare.best_per_method(runs)) == 2


def test_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match="no run directories given"):
        markdown.build_report([], str(tmp_path / "o"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds no config.json (empty or not a run directory)" in err and "\n" == err[-1]
    with pytest.raises(ReportError, match="does not exist"):
        markdown.build_report([str(tmp_path / "nope")], str(tmp_path / "o"))
    bad = make_run(tmp_path, "bad", "distill", 1e-4)
    with pytest.raises(ReportError, match="method='distill'; expected one of"):
        rundirs.load_run(bad)
    broken = make_run(tmp_path, "broken", "kd", 1e-4)
    with open(os.path.join(broken, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "lo')
    # A line cut short by a killed run is skipped (the resumed run re-logs the step).
    assert (
        rundirs.load_run(broken).curve
        == rundirs.load_run(make_run(tmp_path, "ok", "kd", 1e-4)).curve
    )


def test_pairs_and_selection_use_every_differing_setting(tmp_path):
    """Seed, tail and k split runs; a setting is chosen by its mean over seeds."""
    root = tmp_path / "s"
    make_run(root, "kd_s0", "kd", 1e-4, seed=0, log_ppl=3.00)
    make_run(root, "kd_s1", "kd", 1e-4, seed=1, log_ppl=3.02)
    make_run(root, "kd_zero", "kd", 1e-4, tail="zero", log_ppl=2.99)  # one lucky seed
    make_run(root, "kd_zero_s1", "kd", 1e-4, tail="zero", seed=1, log_ppl=3.20)
    make_run(root, "kd_k8", "kd", 1e-4, k=8, log_ppl=3.5)
    make_run(root, "hldc_s1", "hldc", 1e-4, seed=1, log_ppl=2.97)
    make_run(root, "nll_s0", "nll", 1e-4, seed=0, tail="zero", k=8, log_ppl=3.3)
    runs = rundirs.load_runs([str(root)])
    # HLDC seed 1 (tail bucket, k 32) pairs with exactly one KD run: kd_s1.
    assert [kd.name for _, kd in compare.kd_pairs(runs)["hldc"]] == ["kd_s1"]
    # NLL ignores loss.* and data.k: it pairs with every seed-0 KD run.
    assert sorted(kd.name for _, kd in compare.kd_pairs(runs)["nll"]) == [
        "kd_k8",
        "kd_s0",
        "kd_zero",
    ]
    best = {r.method: r for r in compare.best_per_method(runs)}
    assert best["kd"].name == "kd_s0" and best["kd"].seed_ppls == [3.00, 3.02]
    md = tmp_path / "o"
    markdown.build_report([str(root)], str(md))
    text = (md / "report.md").read_text()
    assert (
        "| KD | kd_s0 (2 seeds: mean 3.0100, spread 0.0200) | k=32, tail=bucket | "
        "3.0100 (mean) |" in text
    )
    assert "| KD | kd_s0 | k=32, seed=0, tail=bucket | 3.0000 |" in text  # all-runs table


def test_runs_older_than_a_config_field_pair_with_new_runs(tmp_path):
    """A config.json without loss.signal / data.samples (written before they existed)
    reads as top-k / 0, so it is the same setting as a new top-k run; data.samples
    does not split NLL runs (NLL reads no teacher signal)."""
    root = tmp_path / "s"
    make_run(root, "kd_old", "kd", 1e-4, seed=0, log_ppl=3.00)
    new = make_run(root, "kd_new", "kd", 1e-4, seed=1, log_ppl=3.02)
    nll = make_run(root, "nll_new", "nll", 1e-4, seed=1, log_ppl=3.3)
    for path, samples in ((new, 0), (nll, 12)):
        config = json.loads((tmp_path / "s" / os.path.basename(path) / "config.json").read_text())
        config["loss"]["signal"] = "topk"
        config["data"]["samples"] = samples
        (tmp_path / "s" / os.path.basename(path) / "config.json").write_text(json.dumps(config))
    runs = rundirs.load_runs([str(root)])
    best = {r.method: r for r in compare.best_per_method(runs)}
    assert best["kd"].seed_ppls == [3.00, 3.02]  # one setting, two seeds
    assert "data.samples" not in best["nll"].hparams
    assert [kd.name for _, kd in compare.kd_pairs(runs)["nll"]] == ["kd_new"]
