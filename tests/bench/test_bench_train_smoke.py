"""bench/train_bench.py runs (tiny config, a few steps) for both store profiles.

The synthetic and the loader-fed batches share one jitted step
(chex.assert_max_traces(n=1)), so their dtypes must agree for each profile.
"""

import importlib.util
import json
import pathlib

import pytest


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_train_bench_runs(tmp_path, profile):
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "train_bench.py"
    spec = importlib.util.spec_from_file_location("train_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert (
        bench.main(
            [
                "--methods",
                "nll,hldc",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--rows",
                "16",
                "--profile",
                profile,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert (
        result["model"],
        result["batch"],
        result["seq_len"],
        result["vocab"],
        result["steps"],
    ) == ("tiny", 8, 32, 512, 2)
    # FLOPs/token of the tiny student, by hand (tests/trainer/test_trainer_e2e.py:
    # C_data = 6·148,800 + 6·64·512; hldc adds 6·64·64).
    assert [(r["method"], r["flops_per_token"]) for r in result["rows"]] == [
        ("nll", 1_089_408),
        ("hldc", 1_113_984),
    ]
    for row in result["rows"]:
        for feed in ("synthetic", "loader"):
            assert row[f"{feed}_step_s"] > 0 and row[f"{feed}_tokens_per_s"] > 0
            assert row[f"{feed}_tokens_per_s"] == pytest.approx(256 / row[f"{feed}_step_s"])
        assert row["loader_over_synthetic"] > 0
