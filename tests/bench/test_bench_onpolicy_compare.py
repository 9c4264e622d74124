"""bench/onpolicy_compare.py: the plan order, the summary arithmetic and tables on hand-made
pieces, refusals (fast), and (slow) the real chain at `ci` through the real CLIs."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_plan_is_seed_major():
    bench = _load("onpolicy_compare")
    plan = bench.plan(["kd_sampled", "opd_live"], seeds=2)
    assert plan == [
        ("teacher",),
        ("phase1", 0),
        ("row", "kd_sampled", 0),
        ("row", "opd_live", 0),
        ("phase1", 1),
        ("row", "kd_sampled", 1),
        ("row", "opd_live", 1),
        ("demo_kd", 0),  # The demo's own full-budget KD students, where OUT has them.
        ("demo_kd", 1),
    ]
    assert [bench.piece_key(p) for p in plan[:3]] == ["teacher", "phase1_s0", "kd_sampled_s0"]
    assert bench.piece_key(plan[-1]) == "demo_kd_s1"
    assert bench.plan(["opd_live"], seeds=2, from_seed=1) == [
        ("teacher",),
        ("phase1", 1),
        ("row", "opd_live", 1),
        ("demo_kd", 1),
    ]


def _piece(kind, log_ppl, seed=None, row=None, teacher_nll=4.5, **extra):
    samples = {"teacher_nll": teacher_nll, "teacher_nll_se": 0.02, "student_nll": 4.0,
               "reverse_kl": teacher_nll - 4.0, "n": 260}  # fmt: skip
    p = {"kind": kind, "log_ppl": log_ppl, "log_ppl_se": 0.018, "samples": samples,
         "wall_s": 100.0, "student_flops": 5e11, **extra}  # fmt: skip
    if seed is not None:
        p["seed"] = seed
    if row is not None:
        p["row"] = row
    return p


def test_summary_by_hand():
    s = _load("onpolicy_summary")
    down = {"piqa": {"acc": 0.5, "acc_se": 0.035, "n": 200}}
    pieces = {
        "teacher": _piece("teacher", 4.25, teacher_nll=4.36),
        "phase1_s0": _piece("phase1", 4.50, 0),
        "phase1_s1": _piece("phase1", 4.52, 1),
        "demo_kd_s0": _piece("demo_kd", 4.38, 0),
        "kd_sampled_s0": _piece("row", 4.40, 0, "kd_sampled", downstream=down),
        "kd_sampled_s1": _piece("row", 4.42, 1, "kd_sampled", downstream=down),
        # Better than the default by 0.05, beyond both spreads (0.02, 0.01).
        "kd_live_s0": _piece("row", 4.35, 0, "kd_live", teacher_flops=3e12),
        "kd_live_s1": _piece("row", 4.36, 1, "kd_live", teacher_flops=5e12),
        # Worse by 0.03: beyond the default's spread (0.02), within its own (0.04).
        "opd_live_s1": _piece("row", 4.46, 1, "opd_live"),
        "opd_live_s0": _piece("row", 4.42, 0, "opd_live"),
        "oprd_store_s0": _piece(
            "row", 4.6, 0, "oprd_store", stage_wall_s={"rollouts": 10, "scored": 60, "run": 30}
        ),
    }
    out = s.summarise(pieces, ["kd_sampled", "kd_live", "opd_live", "oprd_store", "kd_topk"])
    rows = out["rows"]
    assert rows["kd_topk"] is None  # Not run yet: an empty table row, no crash.
    assert rows["opd_live"]["log_ppl"]["values"] == [4.42, 4.46]  # Sorted by seed.
    assert rows["kd_live"]["delta"] == pytest.approx(-0.055)
    assert rows["kd_live"]["beyond_noise"] and not rows["opd_live"]["beyond_noise"]
    assert not rows["oprd_store"]["beyond_noise"]  # One seed: never beyond noise.
    # A row's student FLOPs include its seed's phase 1; the teacher's are the mean.
    assert rows["kd_live"]["student_flops"] == pytest.approx(1e12)
    assert rows["kd_live"]["teacher_flops"] == pytest.approx(4e12)
    assert rows["oprd_store"]["stage_share"] == pytest.approx(
        {"rollouts": 0.1, "scored": 0.6, "run": 0.3}
    )
    assert out["phase1"]["student_flops"] == pytest.approx(5e11)  # Not doubled.
    assert rows["kd_sampled"]["downstream"]["piqa"] == {"acc": 0.5, "se": 0.035, "n": 200}
    assert out["winner"] == {
        "row": "kd_live",
        "runner_up": "kd_sampled",
        "margin": pytest.approx(0.055),
        "beyond_noise": True,
    }
    md = s.markdown(out)
    assert "| KD, live teacher, full vocabulary | 4.3500 / 4.3600 | -0.0550* |" in md
    assert "| OPD, live (exact reverse KL) | 4.4200 / 4.4600 | +0.0300 |" in md
    assert "scoring (the dump) 60%" in md and "| 0.500 ± 0.035 |" in md
    assert "| KD, top-k, stored | – |" in md
    assert "| KD sampled, one run of the whole budget (the demo's; reference) | 4.3800 |" in md
    assert "Lowest held-out log-ppl: KD, live teacher" in md and "beyond the seed spread" in md


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--rows", "kd,opd_live"], "--rows kd,opd_live: use some of"),
        (["--seeds", "0"], "--seeds 0 --rounds 4: both must be >= 1"),
        (["--size", "huge"], "unknown demo size 'huge'"),
        (["--report-only"], "does not exist; run the comparison first"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv, match, tmp_path, capsys, monkeypatch):
    bench = _load("onpolicy_compare")
    monkeypatch.setattr(bench.demo, "run_demo", lambda *a, **k: pytest.fail("must not run"))
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onpolicy_compare: ") and match in err[0], err


@pytest.mark.slow
def test_real_comparison_at_ci_size(tmp_path, capsys):
    """The chain through the real CLIs: a stored, a live and both kinds of rounds, 2 rounds."""
    bench = _load("onpolicy_compare")
    rows = "kd_sampled,kd_live,opd_live,oprd_store"
    argv = ["--size", "ci", "--seeds", "1", "--rounds", "2", "--rows", rows, "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    saved = json.loads((tmp_path / "onpolicy_compare.json").read_text())
    assert set(saved["pieces"]) == {"teacher", "phase1_s0"} | {f"{r}_s0" for r in rows.split(",")}
    rows_out = saved["summary"]["rows"]
    assert all(r["log_ppl"]["mean"] > 0 and r["teacher_nll"]["mean"] > 0 for r in rows_out.values())
    assert rows_out["kd_live"]["teacher_flops"] > 0 and rows_out["opd_live"]["generation_flops"] > 0
    assert set(rows_out["oprd_store"]["stage_share"]) == {"rollouts", "scored", "run"}
    # Phase 1 + the same phase-2 steps: the same budget for every row with a logit term;
    # OPRD (hidden term only) never runs the student's upper half: cheaper steps.
    flops = [rows_out[r]["student_flops"] for r in ("kd_sampled", "kd_live", "opd_live")]
    assert max(flops) / min(flops) < 1.05
    assert rows_out["oprd_store"]["student_flops"] < 0.9 * min(flops)
    assert "OPRD store rounds, share of a round's wall time" in capsys.readouterr().out


def test_stage_walls_count_only_rounds_generated_in_full():
    bench = _load("onpolicy_compare")
    done = [
        {"round": 0, "stage": "rollouts", "wall_s": 3.0, "generated_tokens": 0},  # Resumed.
        {"round": 0, "stage": "scored", "wall_s": 50.0},
        {"round": 0, "stage": "run", "wall_s": 40.0},
        {"round": 1, "stage": "rollouts", "wall_s": 20.0, "generated_tokens": 640},
        {"round": 1, "stage": "scored", "wall_s": 60.0},
        {"round": 1, "stage": "run", "wall_s": 30.0},
    ]
    assert bench.stage_walls(done) == ({"rollouts": 20.0, "scored": 60.0, "run": 30.0}, [1])
