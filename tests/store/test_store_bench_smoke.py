"""The store benchmark runs end to end at its real geometry (one row)."""
import json

import pytest

from store_testlib import load_bench


@pytest.mark.slow
def test_store_bench_one_row(tmp_path):
    bench = load_bench("store_bench")
    out = tmp_path / "r.json"
    report = bench.main(["--rows", "1", "--rows_per_unit", "1", "--read_batch", "1",
                         "--dir", str(tmp_path / "stores"), "--out", str(out)])
    assert json.loads(out.read_text())["geometry"]["tokens"] == 2048
    exact, compact = report["profiles"]
    assert 5600 < exact["bytes_per_token"] < 5700  # 4 + 256 + 256 + 5120 + 4, plus shard indexes
    for res in (exact, compact):  # every read mode was timed against the raw read of the same run
        for mode in ("stored", "loader", "norm32", "f32"):
            assert res[f"{mode}_read_MB_s"] > 0 and res[f"{mode}_vs_raw"] > 0, (res["profile"], mode)
    # The exact loader read skips only the per-token RMS (4 B/token).
    assert exact["loader_read_bytes"] < exact["stored_read_bytes"] < exact["loader_read_bytes"] + 5 * 2048
    assert report["goals"]["compact_le_3000_B_token"] and report["goals"]["compact_cos_p1_ge_0.9995"]
    assert report["goals"]["compact_kl_le_1e-3"]
