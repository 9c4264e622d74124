"""The shrunken demo: the whole chain (text → tokenizer → tokens store → teacher
pre-training → Beam teacher dump → verify → NLL/KD/HLDC/HLDF students →
evaluation → report) through the same CLIs `make demo` uses.

This is CI's true end-to-end path; it takes a few minutes on 2 cores.
"""

import json
import os

import pytest

from scripts import demo, demo_sizes, demo_stages


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    demo.run_demo("ci", out)
    return out


def test_every_stage_finished_and_report_written(demo_out):
    for name, _ in demo_stages.STAGES:
        assert os.path.exists(os.path.join(demo_out, ".done", name)), name
    report = open(os.path.join(demo_out, "report.md")).read()
    for method in ("NLL", "KD", "HLDC", "HLDF", "teacher"):
        assert f"| {method} |" in report
    for png in (
        "heldout_ppl.png",
        "delta_vs_nll.png",
        "improvement_over_kd.png",
        "sweep_report/loss_vs_flops.png",
    ):
        assert os.path.getsize(os.path.join(demo_out, png)) > 1000
    assert "negative means the method is better than NLL" in report
    assert "NOT charged to the KD/HLD students" in report and "Objective penalty" in report


def test_results_json_has_seeds_and_diagnostics(demo_out):
    with open(os.path.join(demo_out, "results.json")) as f:
        results = json.load(f)
    ppl = results["heldout_log_ppl"]
    assert len(ppl["teacher"]) == 1 and len(ppl["nll"]) == 2 and len(ppl["kd"]) == 2
    assert len(ppl["hldc"]) >= 1 and len(ppl["hldf"]) >= 1
    assert ppl["nll"][0] != ppl["nll"][1]  # two seeds really differ
    pen = results["objective_penalty"]
    assert pen["students"]["tail"] == "bucket" and pen["students"]["penalty_nats"] == 0.0
    assert pen["alpha0.9_zero"]["penalty_nats"] > pen["students"]["threshold_nats"]
    assert 0 < results["topk_mass_coverage"] <= 1.0001
    # Every held-out row is scored (no --limit truncation).
    from store import StoreReader

    rows = StoreReader(os.path.join(demo_out, "heldout_store")).committed_rows().size
    assert results["heldout_rows"] == rows
    # Every stage before the report, with its wall time and the load when it ended.
    assert list(results["stages"]) == [name for name, _ in demo_stages.STAGES[:-1]]
    assert all(s["wall_s"] >= 0 and s["load_avg_1m"] >= 0 for s in results["stages"].values())


def test_students_are_compute_matched(demo_out):
    budget = demo_sizes.get_size("ci").student_budget
    ctx = demo_stages.Context(size=demo_sizes.get_size("ci"), out=demo_out)
    for name, _, _ in demo_stages.student_runs(ctx):
        with open(os.path.join(demo_out, "runs", name, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        # Steps are whole, so a run lands within one step's FLOPs below the budget.
        assert 0.85 * budget <= last["cumulative_flops"] <= budget, name
        with open(os.path.join(demo_out, "runs", name, "eval.json")) as f:
            assert json.load(f)["tasks"]["heldout"]["log_ppl"] > 0


def test_rerun_skips_finished_stages(demo_out, capsys):
    demo.run_demo("ci", demo_out)
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == len(demo_stages.STAGES)


def test_failure_names_the_stage_and_how_to_resume(demo_out, tmp_path):
    out = str(tmp_path / "broken")
    os.makedirs(os.path.join(out, ".done"))
    for name in ("corpus", "tokenizer", "spine"):  # pretend earlier stages ran: they did not
        open(os.path.join(out, ".done", name), "w").close()
    with pytest.raises(demo.StageFailed, match=r"stage 'teacher' failed: .*rerun `make demo`"):
        demo.run_demo("ci", out)


def test_size_is_a_flag_not_an_environment_switch(monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda size, out, redo: seen.update(size=size))
    monkeypatch.setenv("DEMO_SIZE", "gpu")
    assert demo.main(["--size", "ci"]) == 0 and seen["size"] == "ci"
    assert demo.main([]) == 0 and seen["size"] == "cpu"  # the env var is not read


def test_dump_subset_is_hash_chosen_not_alphabetical():
    from scripts import demo_corpus

    docs = [f"doc {i:04d}" for i in range(100)]
    subset = demo_corpus.hash_subset(docs, 10)
    assert len(subset) == 10 and subset != docs[:10]
    assert subset == [d for d in docs if d in subset]  # original order kept
    assert (
        demo_corpus.hash_subset(docs, 10) == subset and demo_corpus.hash_subset(docs, None) == docs
    )


def test_downstream_cells_mark_chance():
    from scripts import demo_results

    near = demo_results.downstream_cell("piqa", {"error": 0.48, "n": 200})
    far = demo_results.downstream_cell("piqa", {"error": 0.30, "n": 200})
    assert near["near_chance"] and not far["near_chance"] and not far["worse_than_chance"]
    assert demo_results.downstream_cell("piqa", {"error": 0.70, "n": 200})["worse_than_chance"]
    assert far["se"] == pytest.approx((0.3 * 0.7 / 200) ** 0.5)
    assert demo_results.downstream_cell("lambada", {"error": 1.0, "n": 100})["near_chance"]


def test_unknown_size_and_stage_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo size 'huge'"):
        demo.run_demo("huge", str(tmp_path))
    with pytest.raises(ValueError, match="is not a stage"):
        demo.run_demo("ci", str(tmp_path), redo="nope")
