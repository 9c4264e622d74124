"""bench/loader_bench.py runs (one row per case) and reports every mode."""

import importlib.util
import json
import pathlib


def test_loader_bench_runs(tmp_path):
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "loader_bench.py"
    spec = importlib.util.spec_from_file_location("loader_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "loader.json"
    bench.main(
        [
            "--rows",
            "1",
            "--rows_per_unit",
            "1",
            "--read_batch",
            "1",
            "--repeats",
            "1",
            "--decode_repeats",
            "1",
            "--dir",
            str(tmp_path / "stores"),
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    cases = ["exact", "compact", "lean", "lean_s12"]
    assert [r["case"] for r in report["profiles"]] == cases
    for r in report["profiles"]:
        assert r["tokens"] == 2048 and r["bytes"] > 0
        # A KD+HLD batch: tokens, top-k and one hidden layer; never the per-token RMS.
        assert "tokens" in r["arrays"] and not any(a.endswith("/rms") for a in r["arrays"])
        for key in ("loader_vs_raw", "host_vs_raw", "raw_MB_s", "device_decode_tokens_s"):
            assert r[key] > 0, key
    assert set(report["goals"]) == {f"{c}_loader_ge_0.7x_raw" for c in cases}
    assert (
        "sampled" in report["profiles"][-1]["fields"]
        and "topk" not in report["profiles"][-1]["fields"]
    )
