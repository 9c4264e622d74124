"""bench/profile_quality.py: the table arithmetic on hand-made numbers, the
refusals, and (slow) the whole chain at the demo's `ci` size."""

import importlib.util
import json
import os
import pathlib
import sys

import pytest

from scripts import demo


def _bench():
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "profile_quality.py"
    spec = importlib.util.spec_from_file_location("profile_quality", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up while being defined
    spec.loader.exec_module(bench)
    return bench


def _table():
    _bench()  # Puts the repository root on sys.path, as running the bench does.
    from bench import profile_quality_table

    return profile_quality_table


def _run(profile, method, seed, log_ppl):
    return {"profile": profile, "method": method, "seed": seed, "log_ppl": log_ppl}


def _runs(table, values):
    """{(row, seed): (kd, hldc)} -> runs."""
    runs = {}
    for (row, seed), per_method in values.items():
        for m, v in zip(table.METHODS, per_method, strict=True):
            runs[table.run_name(row, m, seed)] = _run(row, m, seed, v)
    return runs


def test_summary_deltas_spread_and_goals_by_hand():
    table = _table()
    stores = {
        "exact": {
            "bytes_per_token": 300.0,
            "arrays": {
                "tokens": 4.0,
                "topk/ids": 20.0,
                "topk/logprobs": 16.0,
                "hidden/2": 256.0,
                "hidden_aux/2/rms": 4.0,
            },
        },
        "compact": {
            "bytes_per_token": 150.0,
            "arrays": {
                "tokens": 4.0,
                "topk/ids": 20.0,
                "sampled/ids": 6.0,
                "hidden/2": 100.0,
                "hidden_aux/2/rms": 20.0,
            },
        },
    }
    runs = _runs(
        table,
        {
            ("exact", 0): (4.400, 4.410),
            ("exact", 1): (4.403, 4.401),
            ("compact", 0): (4.404, 4.420),
        },
    )
    summary = table.summarise(stores, runs, seeds=2, goals={"compact": 0.005})
    assert summary["references"] == ["exact"]
    # Spread = max - min over exact's two seeds; deltas against exact seed 0.
    assert summary["spread"]["exact"]["kd"] == pytest.approx(0.003)
    assert summary["spread"]["exact"]["hldc"] == pytest.approx(0.009)
    compact = summary["rows"]["compact"]
    assert compact["kd"]["delta"]["exact"] == pytest.approx(0.004)
    assert compact["hldc"]["delta"]["exact"] == pytest.approx(0.010)
    assert compact["kd"]["goal_met"] is True and compact["hldc"]["goal_met"] is False  # goal 0.005
    assert compact["kd"]["beyond_spread"] is True and compact["hldc"]["beyond_spread"] is True
    assert summary["rows"]["exact"]["kd"]["goal_met"] is None
    lines = table.markdown_table(summary).splitlines()
    assert lines[0].startswith(
        "| row | B/token on disk (tokens + logits + activations) | KD log-ppl"
    )
    assert lines[2] == "| exact | 300.0 (4 + 36 + 260) | 4.4000 | – | 4.4100 | – | – | – | – |"
    assert lines[3] == (
        "| compact | 150.0 (4 + 26 + 120) | 4.4040 | +0.0040 | 4.4200 | +0.0100 "
        "| 0.005 | NO (HLDC) | KD, HLDC |"
    )
    assert "0.0030" in lines[4] and "0.0090" in lines[4]


def test_live_reference_row_by_hand():
    # Two references: deltas against live (first) and exact, each paired by seed;
    # the noise column compares |delta vs live| with live's own seed spread.
    table = _table()
    rows = {
        "live": {"teacher_flops_per_token": 2.5e6},
        "exact": {"bytes_per_token": 10.0, "arrays": {"tokens": 4.0, "topk/ids": 6.0}},
        "lean": {"bytes_per_token": 5.0, "arrays": {"tokens": 4.0, "sampled/ids": 1.0}},
    }
    runs = _runs(
        table,
        {
            ("live", 0): (4.30, 4.31),
            ("live", 1): (4.32, 4.30),  # spread: KD 0.02, HLDC 0.01
            ("exact", 0): (4.40, 4.41),
            ("exact", 1): (4.41, 4.40),
            ("lean", 0): (4.35, 4.305),
            ("lean", 1): (4.37, 4.305),
        },
    )
    summary = table.summarise(rows, runs, seeds=2, profile_seeds=2, goals={"lean": 0.01})
    assert summary["references"] == ["live", "exact"]
    live, exact, lean = (summary["rows"][n] for n in ("live", "exact", "lean"))
    assert live["kd"]["delta"] == {"live": None, "exact": pytest.approx(-0.095)}
    assert live["kd"]["goal_met"] is None and live["kd"]["beyond_spread"] is None
    assert exact["kd"]["seed_deltas"]["live"] == pytest.approx([0.10, 0.09])
    assert exact["kd"]["delta"]["exact"] is None and exact["kd"]["beyond_spread"] is True
    # lean HLDC: -0.005 and +0.005 vs live (mean 0), -0.105 / -0.095 vs exact.
    assert lean["hldc"]["delta"]["live"] == pytest.approx(0.0, abs=1e-12)
    assert lean["hldc"]["delta"]["exact"] == pytest.approx(-0.10)
    assert lean["hldc"]["goal_met"] is True and lean["hldc"]["beyond_spread"] is False
    assert lean["kd"]["delta"]["live"] == pytest.approx(0.05) and lean["kd"]["beyond_spread"]
    lines = table.markdown_table(summary).splitlines()
    assert lines[0] == (
        "| row | B/token on disk (tokens + logits + activations) | KD log-ppl | Δ KD vs live "
        "| Δ KD vs exact | HLDC log-ppl | Δ HLDC vs live | Δ HLDC vs exact | goal: Δ vs exact ≤ "
        "| met? | \\|Δ vs live\\| > live's seed spread |"
    )
    assert lines[2] == (
        "| live | no store (teacher forward in every step: 2.5 MFLOP/token) | 4.3100 | – "
        "| -0.0950 | 4.3050 | – | -0.1000 | – | – | – |"
    )
    assert lines[3] == (
        "| exact | 10.0 (4 + 6 + 0) | 4.4050 | +0.0950 | – | 4.4050 | +0.1000 | – | – | – "
        "| KD, HLDC |"
    )
    assert lines[4] == (
        "| lean | 5.0 (4 + 1 + 0) | 4.3600 | +0.0500 | -0.0450 | 4.3050 | +0e+00 | -0.1000 "
        "| 0.01 | yes (KD, HLDC better by more than the goal) | KD |"
    )
    # Each spread under the delta column it is the noise of.
    assert lines[5] == "| live seed spread (max−min) |  |  | 0.0200 |  |  | 0.0100 |  |  |  |  |"
    assert lines[6] == "| exact seed spread (max−min) |  |  |  | 0.0100 |  |  | 0.0100 |  |  |  |"


def test_goal_is_one_sided_and_says_better():
    table = _table()
    stores = {p: {"bytes_per_token": 1.0, "arrays": {}} for p in ("exact", "lean")}
    runs = {
        table.run_name("exact", "kd", 0): _run("exact", "kd", 0, 4.40),
        table.run_name("exact", "hldc", 0): _run("exact", "hldc", 0, 4.41),
        table.run_name("lean", "kd", 0): _run("lean", "kd", 0, 4.405),  # worse by 0.005
        table.run_name("lean", "hldc", 0): _run("lean", "hldc", 0, 4.39),
    }  # better by 0.02
    summary = table.summarise(stores, runs, seeds=1, goals={"lean": 0.01})
    assert summary["spread"] == {"exact": {"kd": None, "hldc": None}}
    assert summary["rows"]["lean"]["hldc"]["goal_met"] is True  # goal 0.01: better counts
    row = table.markdown_table(summary).splitlines()[3]
    assert "| 0.01 | yes (HLDC better by more than the goal) | – |" in row
    assert table._nats(-3e-6) == "-3e-06" and table._nats(0.01234) == "+0.0123"


def test_profile_seeds_pair_with_exact_seeds():
    table = _table()
    stores = {p: {"bytes_per_token": 1.0, "arrays": {}} for p in ("exact", "lean")}
    values = {("exact", 0): 4.40, ("exact", 1): 4.41, ("lean", 0): 4.39, ("lean", 1): 4.42}
    runs = _runs(table, {k: (v, v) for k, v in values.items()})
    lean = table.summarise(stores, runs, seeds=2, profile_seeds=2)["rows"]["lean"]["kd"]
    assert lean["seed_deltas"]["exact"] == pytest.approx([-0.01, 0.01])  # 4.39-4.40, 4.42-4.41
    assert lean["delta"]["exact"] == pytest.approx(0.0) and lean["log_ppl"] == pytest.approx(4.405)


def _paired(table, fingerprint="f00d"):
    """Hand-made stores and runs of live/exact/lean, paired as the bench makes them."""

    def config(row, seed):
        return {
            "seed": seed,
            "run_dir": f"/o/runs/{row}_s{seed}",
            "loss": {"alpha": 0.7, "signal": "sampled" if row == "lean" else "topk"},
            "data": {"k": 0 if row != "exact" else 32, "batch_size": 16},
            "store": {"url": "/o/stores/lean" if row == "lean" else "/o/stores/exact"},
            "teacher": {"checkpoint": "/o/runs/teacher/export" if row == "live" else ""},
        }

    stores = {p: {"teacher_fingerprint": "f00d"} for p in ("exact", "lean")}
    runs = {}
    for row in ("live", "exact", "lean"):
        for m in table.METHODS:
            for seed in (0, 1):
                runs[table.run_name(row, m, seed)] = {
                    "profile": row,
                    "method": m,
                    "seed": seed,
                    "steps": 300,
                    "tokens": 614400,
                    "config": config(row, seed),
                    "live_teacher": {"fingerprint": fingerprint} if row == "live" else None,
                }
    return stores, runs


def test_pairing_check_lists_what_differs_and_refuses_the_rest():
    table = _table()
    stores, runs = _paired(table)
    assert table.check_pairing(stores, runs) == {
        "exact": [],
        "lean": ["data.k", "loss.signal", "store.url"],
        "live": ["data.k", "teacher.checkpoint"],
    }
    # A run of older code lacks fields added since; their default reproduces it.
    stores, runs = _paired(table)
    del runs["lean_kd_s0"]["config"]["loss"]["alpha"]
    with pytest.raises(ValueError, match=r"\['loss.alpha'\]"):
        table.check_pairing(stores, runs)
    assert table.check_pairing(stores, runs, {"loss.alpha": 0.7})["lean"] == [
        "data.k",
        "loss.signal",
        "store.url",
    ]
    # Another seed (another init and data order) is not a pair.
    stores, runs = _paired(table)
    runs["lean_hldc_s1"]["config"]["seed"] = 0
    with pytest.raises(ValueError, match=r"lean_hldc_s1 is not paired .* \['seed'\]"):
        table.check_pairing(stores, runs)
    # Nor another alpha, nor a run that stopped at other steps.
    stores, runs = _paired(table)
    runs["live_kd_s0"]["config"]["loss"]["alpha"] = 0.5
    with pytest.raises(ValueError, match=r"\['loss.alpha'\]"):
        table.check_pairing(stores, runs)
    stores, runs = _paired(table)
    runs["live_kd_s1"]["steps"] = 299
    with pytest.raises(ValueError, match="steps/tokens 299/614400 vs 300/614400"):
        table.check_pairing(stores, runs)
    # Live students read exact's tokens and the teacher that was dumped.
    stores, runs = _paired(table)
    runs["live_kd_s0"]["config"]["store"]["url"] = "/o/stores/lean"
    with pytest.raises(ValueError, match="did not read exact's store"):
        table.check_pairing(stores, runs)
    stores, runs = _paired(table, fingerprint="beef")
    with pytest.raises(ValueError, match="live teacher beef… is not the teacher dumped"):
        table.check_pairing(stores, runs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profiles", "exact,bogus"], "unknown profile(s) ['bogus']"),
        (["--profiles", "compact"], "must include exact"),
        (["--profiles", "live,compact"], "must include exact"),
        (["--size", "huge"], "unknown demo size 'huge'"),
        (["--profiles", "exact", "--seeds", "0"], "at least one seed"),
        (
            ["--profiles", "exact", "--profile-seeds", "3"],
            "--profile-seeds 3 must be in [1, --seeds=2]",
        ),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    bench = _bench()
    assert bench.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_demo_until_names_a_stage(tmp_path):
    with pytest.raises(ValueError, match="until='nope' is not a stage"):
        demo.run_demo("ci", str(tmp_path), until="nope")


def test_demo_until_stops_there_when_earlier_stages_are_cached(tmp_path, capsys):
    # The bench's rerun case: corpus..teacher finished earlier. Nothing may run
    # (the dump stage would fail here: there is no corpus or teacher).
    (tmp_path / ".done").mkdir()
    for name in ("corpus", "tokenizer", "spine", "teacher"):
        (tmp_path / ".done" / name).write_text("1\n")
    demo.run_demo("ci", str(tmp_path), until="teacher")
    assert "stopped after teacher" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / ".done").iterdir()) == [
        "corpus",
        "spine",
        "teacher",
        "tokenizer",
    ]


@pytest.mark.slow
def test_ci_size_live_exact_and_compact_end_to_end(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "pq"
    argv = ["--size", "ci", "--profiles", "live,exact,compact", "--seeds", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "| live | no store" in table and "| exact |" in table and "| compact |" in table
    result = json.loads((out / "profile_quality.json").read_text())
    assert set(result["runs"]) == {
        f"{row}_{m}_s0" for row in ("live", "exact", "compact") for m in ("kd", "hldc")
    }
    for run in result["runs"].values():
        assert 0 < run["log_ppl"] < 20 and run["flops"] <= result["student_flops_budget"]
    exact, compact = (result["stores"][p]["bytes_per_token"] for p in ("exact", "compact"))
    assert 0 < compact < exact  # the compact store really is smaller on disk
    # Live students read exact's tokens and the teacher itself: nothing else differs.
    assert result["differs_from_exact"]["live"] == [
        "data.k",
        "data.samples",
        "teacher.checkpoint",
    ]
    assert (
        result["runs"]["live_kd_s0"]["live_teacher"]["fingerprint"]
        == (result["stores"]["exact"]["teacher_fingerprint"])
    )
    # A rerun reuses everything (teacher, stores, students): no new trainer log lines.
    before = os.path.getsize(out / "logs" / "students.log")
    assert bench.main(argv) == 0
    assert os.path.getsize(out / "logs" / "students.log") == before
