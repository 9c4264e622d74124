"""bench/teacher_ladder.py: the plan order, the table arithmetic on hand-made numbers,
resume, refusals (fast, with the demo's stages faked), and (slow) the real chain at `ci`."""

import importlib.util
import json
import pathlib
import sys

import pytest


def _bench():
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "teacher_ladder.py"
    spec = importlib.util.spec_from_file_location("teacher_ladder", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    return bench


def test_plan_is_teacher_by_teacher_then_the_other_seeds():
    bench = _bench()
    plan = bench.plan([0.5, 1.0], [0.2, 0.7], seeds=2)
    assert plan == [
        ("teacher", 0.5),
        ("nll", 0),
        ("kd", 0.5, 0.2, 0),
        ("kd", 0.5, 0.7, 0),
        ("teacher", 1.0),
        ("kd", 1.0, 0.2, 0),
        ("kd", 1.0, 0.7, 0),
        ("nll", 1),
        ("kd", 0.5, 0.2, 1),
        ("kd", 0.5, 0.7, 1),
        ("kd", 1.0, 0.2, 1),
        ("kd", 1.0, 0.7, 1),
    ]
    assert [bench.piece_key(p) for p in plan[:3]] == [
        "teacher_x0.5",
        "ladder_nll_s0",
        "ladder_t0.5_a0.2_s0",
    ]
    assert bench.teacher_run(1.0) == "teacher"  # the demo's own teacher


def _pieces(bench, values):
    out = {}
    for key, v in values.items():
        if key.startswith("teacher"):
            b = 1.0 if key == "teacher" else float(key.split("_x")[1])
            out[key] = {"kind": "teacher", "budget": b, "log_ppl": v}
        elif key.startswith("ladder_nll"):
            out[key] = {"kind": "nll", "seed": int(key[-1]), "log_ppl": v}
        else:
            _, t, a, s = key.split("_")
            out[key] = {
                "kind": "kd",
                "teacher_budget": float(t[1:]),
                "alpha": float(a[1:]),
                "seed": int(s[1:]),
                "log_ppl": v,
            }
    return out


def test_summary_deltas_and_table_by_hand():
    bench = _bench()
    pieces = _pieces(
        bench,
        {
            "teacher_x0.5": 4.80,
            "teacher": 4.25,
            "ladder_nll_s0": 4.52,
            "ladder_nll_s1": 4.53,
            "ladder_t0.5_a0.7_s0": 4.60,
            "ladder_t0.5_a0.7_s1": 4.62,
            "ladder_t1_a0.7_s0": 4.40,
            "ladder_t1_a0.7_s1": 4.41,
        },
    )
    summary = bench.summarise(pieces, [1.0, 0.5], [0.2, 0.7])  # sorted by budget in the table
    assert summary["nll"]["mean"] == pytest.approx(4.525) and summary["nll"][
        "spread"
    ] == pytest.approx(0.01)
    weak, strong = summary["teachers"]
    assert weak["budget"] == 0.5 and weak["kd"]["0.2"] is None
    assert weak["kd"]["0.7"]["delta_vs_nll"] == pytest.approx(4.61 - 4.525)
    assert weak["kd"]["0.7"]["beats_nll"] is False
    assert strong["kd"]["0.7"]["delta_vs_nll"] == pytest.approx(4.405 - 4.525)
    assert strong["kd"]["0.7"]["beats_nll"] is True  # 0.12 > max(0.01, 0.01)
    table = bench.markdown_table(summary, [0.2, 0.7]).splitlines()
    assert table[2] == "| none (NLL student) | – | 4.5200 / 4.5300 | 4.5200 / 4.5300 |"
    assert table[3] == "| 0.5× demo teacher | 4.8000 | – | 4.6000 / 4.6200 (Δ +0.0850) |"
    assert table[4] == "| 1× demo teacher | 4.2500 | – | 4.4000 / 4.4100 (Δ -0.1200*) |"


class _Fake:
    """The demo's stages, faked: records what ran and writes nothing but the JSON."""

    def __init__(self, bench, monkeypatch, values):
        self.calls = []
        self.values = values
        monkeypatch.setattr(bench.demo, "run_demo", lambda *a, **k: None)
        monkeypatch.setattr(
            bench.demo_stages,
            "train_run",
            lambda ctx, stage, role, run_dir, *a: self.calls.append(("train", run_dir)),
        )
        monkeypatch.setattr(bench.demo_stages, "evaluate_heldout", lambda ctx, name: None)
        monkeypatch.setattr(
            bench.demo_stages,
            "run",
            lambda ctx, stage, *args: self.calls.append(
                ("dump", args[args.index("--store") + 1], args[args.index("--samples") + 1])
            ),
        )
        monkeypatch.setattr(
            bench.demo_results,
            "load_run",
            lambda ctx, name: {"eval": {"heldout": {"log_ppl": self.values[name], "n": 260}}},
        )


def test_ladder_end_to_end_with_faked_stages_resumes_and_refuses_other_settings(
    tmp_path, monkeypatch
):
    bench = _bench()
    values = {
        "teacher_x0.5": 4.8,
        "teacher": 4.25,
        "ladder_nll_s0": 4.52,
        "ladder_t0.5_a0.7_s0": 4.6,
        "ladder_t1_a0.7_s0": 4.4,
    }
    fake = _Fake(bench, monkeypatch, values)
    state = bench.run_ladder("ci", str(tmp_path), [0.5, 1.0], [0.7], seeds=1)
    trained = [c[1].rsplit("/", 1)[1] for c in fake.calls if c[0] == "train"]
    # The 1× teacher is the demo's (trained by demo.run_demo), never retrained here.
    # NLL and 1× at the demo's α go last (the demo may have trained them meanwhile).
    assert trained == ["teacher_x0.5", "ladder_t0.5_a0.7_s0", "ladder_nll_s0", "ladder_t1_a0.7_s0"]
    dumps = [c for c in fake.calls if c[0] == "dump"]
    assert [d[1].rsplit("/", 1)[1] for d in dumps] == ["teacher_x0.5", "teacher"]
    assert all(d[2] == "12" for d in dumps)  # top-k and 12 sampled logits in each store
    saved = json.loads((tmp_path / "teacher_ladder.json").read_text())
    assert set(saved["pieces"]) == set(values) and saved["settings"]["signal"] == "sampled"
    assert all(p["wall_s"] >= 0 and p["git_sha"] for p in saved["pieces"].values())
    assert (tmp_path / "teacher_ladder.png").stat().st_size > 1000
    assert state["summary"]["teachers"][1]["kd"]["0.7"]["log_ppl"] == [4.4]
    fake.calls.clear()
    bench.run_ladder("ci", str(tmp_path), [0.5, 1.0], [0.7], seeds=1)
    assert fake.calls == []  # every piece recorded: nothing runs again
    # A second seed reported before it ran: the first seed's numbers, nothing trained.
    state = bench.run_ladder("ci", str(tmp_path), [0.5, 1.0], [0.7], seeds=2, report_only=True)
    assert fake.calls == [] and state["summary"]["nll"]["log_ppl"] == [4.52]
    with pytest.raises(ValueError, match="was made with .*'signal': 'sampled'.* use another --out"):
        bench.run_ladder("ci", str(tmp_path), [0.5, 1.0], [0.7], seeds=1, signal="topk")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--budgets", "0.5,x"], "--budgets '0.5,x': give comma-separated numbers"),
        (["--budgets", "0,1"], "--budgets '0,1': give positive numbers"),
        (["--signal", "full"], "--signal 'full': use one of"),
        (["--seeds", "0"], "--seeds 0: need at least one seed"),
        (["--size", "huge"], "unknown demo size 'huge'"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv, match, tmp_path, capsys, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench.demo, "run_demo", lambda *a, **k: pytest.fail("must not run"))
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teacher_ladder: ") and match in err[0], err


@pytest.mark.slow
def test_real_ladder_at_ci_size(tmp_path):
    """The whole chain through the real CLIs (~4 min on 2 idle cores)."""
    bench = _bench()
    assert (
        bench.main(
            [
                "--size",
                "ci",
                "--budgets",
                "0.5,1",
                "--alphas",
                "0.7",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "teacher_ladder.json").read_text())
    assert len(saved["pieces"]) == 5
    assert all(p["log_ppl"] > 0 for p in saved["pieces"].values())


def _demo_run(out, name, seed, **loss):
    run = out / "runs" / name
    run.mkdir(parents=True)
    cfg = {
        "method": name.split("_")[0],
        "seed": seed,
        "budget": {"value": 5e9},
        "model": {"name": "demo-student"},
        "loss": {"alpha": 0.7, "signal": "sampled", **loss},
        "data": {"samples": 12},
    }
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "final.json").write_text("{}")
    (run / "eval.json").write_text("{}")


def test_demo_runs_with_the_same_settings_are_reused_not_retrained(tmp_path, monkeypatch):
    bench = _bench()
    _demo_run(tmp_path, "nll_s0", 0)
    _demo_run(tmp_path, "kd_s0", 0, alpha=0.5)  # another α than the ladder's piece: not a twin
    values = {
        "teacher_x0.5": 4.8,
        "teacher": 4.25,
        "nll_s0": 4.51,
        "ladder_t0.5_a0.7_s0": 4.6,
        "ladder_t1_a0.7_s0": 4.4,
    }
    fake = _Fake(bench, monkeypatch, values)
    state = bench.run_ladder("ci", str(tmp_path), [0.5, 1.0], [0.7], seeds=1)
    trained = [c[1].rsplit("/", 1)[1] for c in fake.calls if c[0] == "train"]
    assert trained == ["teacher_x0.5", "ladder_t0.5_a0.7_s0", "ladder_t1_a0.7_s0"]
    nll = state["pieces"]["ladder_nll_s0"]
    assert nll["demo_run"] == "nll_s0" and nll["log_ppl"] == 4.51
    assert "demo_run" not in state["pieces"]["ladder_t1_a0.7_s0"]


@pytest.mark.parametrize(
    "samples, dumped", [(12, ["teacher_x0.5"]), (4, ["teacher", "teacher_x0.5"])]
)
def test_the_demos_finished_dump_is_the_1x_store(tmp_path, monkeypatch, samples, dumped):
    """The demo's dump ran the ladder's 1× command already: read it, do not dump it again
    (unless the ladder asks for another number of sampled draws than the demo dumped)."""
    bench = _bench()
    (tmp_path / ".done").mkdir()
    (tmp_path / ".done" / "dump").write_text("{}")
    values = {
        "teacher": 4.25,
        "teacher_x0.5": 4.8,
        "ladder_nll_s0": 4.52,
        "ladder_t1_a0.7_s0": 4.4,
        "ladder_t0.5_a0.7_s0": 4.6,
    }
    fake = _Fake(bench, monkeypatch, values)
    stores = {}
    monkeypatch.setattr(
        bench.demo_stages,
        "train_run",
        lambda ctx, stage, role, run_dir, store, *a: stores.update(
            {run_dir.rsplit("/")[-1]: store}
        ),
    )
    bench.run_ladder("ci", str(tmp_path), [1.0, 0.5], [0.7], seeds=1, samples=samples)
    assert [c[1].rsplit("/")[-1] for c in fake.calls if c[0] == "dump"] == dumped
    one_x = str(tmp_path / "store") if samples == 12 else str(tmp_path / "stores" / "teacher")
    assert stores["ladder_t1_a0.7_s0"] == one_x and stores["ladder_nll_s0"] == one_x
    assert stores["ladder_t0.5_a0.7_s0"] == str(tmp_path / "stores" / "teacher_x0.5")
