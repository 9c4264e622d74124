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


def _run(profile, method, seed, log_ppl):
    return {"profile": profile, "method": method, "seed": seed, "log_ppl": log_ppl}


def test_summary_deltas_spread_and_goals_by_hand():
    bench = _bench()
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
    runs = {}
    for name, (kd, hldc) in {
        "exact_s0": (4.400, 4.410),
        "exact_s1": (4.403, 4.401),
        "compact_s0": (4.404, 4.420),
    }.items():
        profile, seed = name.split("_s")
        runs[bench.run_name(profile, "kd", int(seed))] = _run(profile, "kd", int(seed), kd)
        runs[bench.run_name(profile, "hldc", int(seed))] = _run(profile, "hldc", int(seed), hldc)
    summary = bench.summarise(stores, runs, seeds=2)
    # Spread = max - min over exact's two seeds; deltas against exact seed 0.
    assert summary["spread"]["kd"] == pytest.approx(0.003)
    assert summary["spread"]["hldc"] == pytest.approx(0.009)
    compact = summary["profiles"]["compact"]
    assert compact["kd"]["delta"] == pytest.approx(0.004)
    assert compact["hldc"]["delta"] == pytest.approx(0.010)
    assert compact["kd"]["goal_met"] is True and compact["hldc"]["goal_met"] is False  # goal 0.005
    assert compact["kd"]["beyond_spread"] is True and compact["hldc"]["beyond_spread"] is True
    assert summary["profiles"]["exact"]["kd"]["goal_met"] is None
    table = bench.markdown_table(summary).splitlines()
    assert table[2] == "| exact | 300.0 (4 + 36 + 260) | 4.4000 | – | 4.4100 | – | – | – | – |"
    assert table[3] == (
        "| compact | 150.0 (4 + 26 + 120) | 4.4040 | +0.0040 | 4.4200 | +0.0100 "
        "| 0.005 | NO (HLDC) | KD, HLDC |"
    )
    assert "0.0030" in table[4] and "0.0090" in table[4]


def test_goal_is_one_sided_and_says_better():
    bench = _bench()
    stores = {p: {"bytes_per_token": 1.0, "arrays": {}} for p in ("exact", "lean")}
    runs = {
        bench.run_name("exact", "kd", 0): _run("exact", "kd", 0, 4.40),
        bench.run_name("exact", "hldc", 0): _run("exact", "hldc", 0, 4.41),
        bench.run_name("lean", "kd", 0): _run("lean", "kd", 0, 4.405),  # worse by 0.005
        bench.run_name("lean", "hldc", 0): _run("lean", "hldc", 0, 4.39),
    }  # better by 0.02
    summary = bench.summarise(stores, runs, seeds=1)
    assert summary["spread"] == {"kd": None, "hldc": None}
    assert summary["profiles"]["lean"]["hldc"]["goal_met"] is True  # goal 0.01: better counts
    row = bench.markdown_table(summary).splitlines()[3]
    assert "| 0.01 | yes (HLDC better by more than the goal) | – |" in row
    assert bench._nats(-3e-6) == "-3e-06" and bench._nats(0.01234) == "+0.0123"


def test_profile_seeds_pair_with_exact_seeds():
    bench = _bench()
    stores = {p: {"bytes_per_token": 1.0, "arrays": {}} for p in ("exact", "lean")}
    values = {("exact", 0): 4.40, ("exact", 1): 4.41, ("lean", 0): 4.39, ("lean", 1): 4.42}
    runs = {
        bench.run_name(p, m, s): _run(p, m, s, v)
        for (p, s), v in values.items()
        for m in bench.METHODS
    }
    lean = bench.summarise(stores, runs, seeds=2, profile_seeds=2)["profiles"]["lean"]["kd"]
    assert lean["seed_deltas"] == pytest.approx([-0.01, 0.01])  # 4.39-4.40, 4.42-4.41
    assert lean["delta"] == pytest.approx(0.0) and lean["log_ppl"] == pytest.approx(4.405)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profiles", "exact,bogus"], "unknown profile(s) ['bogus']"),
        (["--profiles", "compact"], "must include exact"),
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
def test_ci_size_exact_and_compact_end_to_end(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "pq"
    assert (
        bench.main(
            ["--size", "ci", "--profiles", "exact,compact", "--seeds", "1", "--out", str(out)]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| exact |" in table and "| compact |" in table
    result = json.loads((out / "profile_quality.json").read_text())
    assert set(result["runs"]) == {
        "exact_kd_s0",
        "exact_hldc_s0",
        "compact_kd_s0",
        "compact_hldc_s0",
    }
    for run in result["runs"].values():
        assert 0 < run["log_ppl"] < 20 and run["flops"] <= result["student_flops_budget"]
    exact, compact = (result["stores"][p]["bytes_per_token"] for p in ("exact", "compact"))
    assert 0 < compact < exact  # the compact store really is smaller on disk
    # A rerun reuses everything (teacher, stores, students): no new trainer log lines.
    before = os.path.getsize(out / "logs" / "students.log")
    assert (
        bench.main(
            ["--size", "ci", "--profiles", "exact,compact", "--seeds", "1", "--out", str(out)]
        )
        == 0
    )
    assert os.path.getsize(out / "logs" / "students.log") == before
