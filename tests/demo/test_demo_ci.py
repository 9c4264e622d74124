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
    for method in ("NLL", "KD", "HLDC", "HLDF", "teacher (NLL)"):
        assert f"| {method} |" in report
    for png in ("heldout_ppl.png", "improvement_over_kd.png", "sweep_report/loss_vs_flops.png"):
        assert os.path.getsize(os.path.join(demo_out, png)) > 1000


def test_students_are_compute_matched(demo_out):
    budget = demo_sizes.get_size("ci").student_budget
    for method in demo_stages.METHODS:
        with open(os.path.join(demo_out, "runs", method, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        # Steps are whole, so a run lands within one step's FLOPs below the budget.
        assert 0.85 * budget <= last["cumulative_flops"] <= budget, method
        with open(os.path.join(demo_out, "runs", method, "eval.json")) as f:
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


def test_unknown_size_and_stage_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo size 'huge'"):
        demo.run_demo("huge", str(tmp_path))
    with pytest.raises(ValueError, match="is not a stage"):
        demo.run_demo("ci", str(tmp_path), redo="nope")
