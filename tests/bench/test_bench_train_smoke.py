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
    assert bench.main(["--methods", "nll,hldc", "--steps", "2", "--repeats", "1", "--rows", "16",
                       "--profile", profile, "--out", str(tmp_path)]) == 0
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(result["rows"] if "rows" in result else result["methods"]) == 2
