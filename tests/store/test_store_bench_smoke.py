"""The store benchmark runs end to end at its real geometry (one row per vocabulary size)."""

import json

import pytest
from store_testlib import load_bench


@pytest.mark.slow
def test_store_bench_one_row(tmp_path):
    bench = load_bench("store_bench")
    out = tmp_path / "r.json"
    report = bench.main(
        [
            "--rows",
            "1",
            "--rows_per_unit",
            "1",
            "--read_batch",
            "1",
            "--repeats",
            "1",
            "--dir",
            str(tmp_path / "stores"),
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["geometry"]["tokens"] == 2048
    by = {(r["name"], r["vocab_size"]): r for r in report["profiles"]}
    assert set(by) == {(c[0], v) for c in bench.CASES for v in bench.VOCABS}
    exact = by["exact", 32000]
    assert 5600 < exact["bytes_per_token"] < 5700  # 4 + 256 + 256 + 5120 + 4, plus shard indexes
    assert exact["bytes_per_token_formula"] == 4 + 256 + 256 + 5120 + 4
    # lean, k=0, 12 draws at V=262,144: 4 + 854 + 10 + 4 + 27 + 12 + 24 = 935 B before zstd (store/lean.py).
    assert by["lean_s12", 262144]["bytes_per_token_formula"] == 935
    for res in report["profiles"]:  # every read mode was timed against the raw read of the same run
        for mode in ("stored", "loader", "norm32", "f32"):
            assert res[f"{mode}_read_MB_s"] > 0 and res[f"{mode}_vs_raw"] > 0, (res["name"], mode)
        assert set(res["bytes_per_token_by_array"]) == set(res["bytes_per_token_formula_by_array"])
    # The exact loader read skips only the per-token RMS (4 B/token).
    assert (
        exact["loader_read_bytes"]
        < exact["stored_read_bytes"]
        < exact["loader_read_bytes"] + 5 * 2048
    )
    assert by["lean_s12", 262144]["sampled"]["ids_counts_equal_input"]
    assert by["compact", 262144]["fidelity_vs_exact"]["ids_equal"]
    goals = report["goals"]
    assert (
        goals["compact_le_3000_B_token"]
        and goals["compact_cos_p1_ge_0.9995"]
        and goals["compact_kl_le_1e-3"]
    )
    assert (
        goals["lean_s12_V262144_le_1000_B_token_on_disk"]
        and goals["lean_s12_V262144_le_1000_B_token_formula"]
    )
