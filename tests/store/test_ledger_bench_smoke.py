"""The ledger benchmark runs end to end (tiny sizes, local disk only)."""

import json

from store_testlib import load_bench


def test_ledger_bench_tiny(tmp_path):
    bench = load_bench("ledger_bench")
    out = tmp_path / "r.json"
    report = bench.main(
        [
            "--local_sizes",
            "30",
            "--s3_sizes",
            "--no-million",
            "--dir",
            str(tmp_path / "s"),
            "--out",
            str(out),
        ]
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert row == report["rows"][0] and row["units"] == 30
    assert row["no_snapshot"]["open_reader"]["ledger_source"] == "listing (no snapshot)"
    assert row["snapshot"]["open_reader"]["ledger_source"] == "snapshot"
    # manifest, its checksummed copy, the (tokens-only) array metadata checked against it, snapshot,
    # tombstone list; verify planning reads every record.
    assert row["snapshot"]["open_reader"]["requests"] == 5
    assert row["snapshot"]["verify_planning"]["requests"] == 31
