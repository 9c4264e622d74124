"""bench/signal_cost_table.py: the issue-12 goal table from the three benches' JSON."""

import json

import pytest
import signal_cost_table as sct  # bench/, via tests/conftest.py


def _write(tmp_path, loader_ratio, write_ratio, e2e):
    (tmp_path / "loader_bench.json").write_text(
        json.dumps(
            {
                "profiles": [
                    {"case": "compact", "loader_tokens_s": 5e5, "loader_vs_raw": loader_ratio}
                ]
            }
        )
    )
    (tmp_path / "encode_bench.json").write_text(
        json.dumps(
            {
                "modes": {
                    "compact_device_overlapped": {"tokens_s": 4e4},
                    "exact_host": {"tokens_s": 4e4},
                },
                "vs_exact_host": {
                    "compact_device_overlapped": write_ratio,
                    "compact_host": 0.45,
                    "compact_encoded_write": 2.7,
                },
            }
        )
    )
    (tmp_path / "extract_bench.json").write_text(
        json.dumps({"e2e_over_forward": e2e, "e2e_over_extract_device": 1.0})
    )


def test_goals_met_or_not_follow_the_measured_ratios(tmp_path, capsys):
    _write(tmp_path, 0.71, 0.99, 0.54)
    assert sct.main(["--results", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "signal_cost_table.json").read_text())
    assert [r["met"] for r in rows] == [True, False, False]
    assert "0.71x raw" in capsys.readouterr().out


def test_a_missing_bench_result_names_make_bench(tmp_path):
    _write(tmp_path, 0.1, 1.0, 0.9)
    (tmp_path / "encode_bench.json").unlink()
    with pytest.raises(SystemExit, match="encode_bench.json is missing; run `make bench`"):
        sct.main(["--results", str(tmp_path)])
