"""The ledger snapshot: constant-cost opens, checked against the per-unit commit records."""

import json

import numpy as np
import pytest
import tensorstore as ts
from store_testlib import synth_unit

from store import StoreReader, create_store, layout, ledger, open_writer
from store.cli import main
from store.verify import verify_store


def _kv(url):
    return layout.open_kvstore(url)


def test_store_without_snapshot_opens_by_listing(filled_store):
    url, _, _ = filled_store(num_rows=10)
    r = StoreReader(url)
    assert r.ledger_source == "listing (no snapshot)" and r.committed_units == {0, 1, 2}


def test_compact_then_open_uses_snapshot(filled_store, capsys):
    url, _, _ = filled_store(num_rows=10)
    assert main(["compact", url]) == 0
    assert "3 committed units in 1 runs" in capsys.readouterr().out
    r = StoreReader(url)
    assert r.ledger_source == "snapshot" and r.committed_units == {0, 1, 2}
    assert verify_store(url)["ok"]


def test_commits_after_the_snapshot_are_listed(filled_store):
    url, schema, _ = filled_store(num_rows=20, units=[0, 1])  # units 0..4
    w = open_writer(url)
    w.compact()
    a, b = w.unit_rows(3)
    w.write_unit(3, **synth_unit(np.random.default_rng(1), b - a, schema))
    r = StoreReader(url, allow_partial=True)
    assert r.ledger_source == "snapshot" and r.committed_units == {0, 1, 3}
    assert verify_store(url)["ledger_snapshot"] is None


def test_rewrite_of_a_snapshotted_unit_is_seen_via_its_tombstone(filled_store, monkeypatch):
    url, schema, data = filled_store(num_rows=10)
    w = open_writer(url)
    w.compact()
    real_write = ledger.write
    monkeypatch.setattr(ledger, "write", lambda kv, rec: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # the writer dies after un-committing unit 1
        w.write_unit(1, **data[1])
    monkeypatch.setattr(ledger, "write", real_write)
    r = StoreReader(url, allow_partial=True)
    assert r.ledger_source == "snapshot" and r.committed_units == {0, 2}
    w.write_unit(1, **data[1])
    assert StoreReader(url).committed_units == {0, 1, 2}
    assert w.compact()["tombstones_cleared"] == 1 and ledger.tombstones(_kv(url)) == {}
    assert verify_store(url)["ok"]


def test_snapshot_disagreeing_with_records_is_detected(filled_store, capsys):
    url, _, _ = filled_store(num_rows=10)
    open_writer(url).compact()
    ledger.delete(_kv(url), 2)  # a record removed behind the protocol's back (no tombstone)
    report = verify_store(url)
    assert (
        not report["ok"]
        and "disagrees with the commit records (claims [2]" in report["ledger_snapshot"]
    )
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert (
        "ledger snapshot disagrees" in out
        and f"python -m store repair {layout.normalize_url(url)}" in out
    )
    assert (
        main(["repair", url]) == 0
    )  # unit 2 (partial now) is un-committed, the snapshot re-compacted
    report = verify_store(url)
    assert report["ledger_snapshot"] is None and [b["status"] for b in report["bad_units"]] == [
        "missing"
    ]


def test_corrupt_snapshot_is_ignored_and_reported(filled_store, tmp_path):
    url, _, _ = filled_store(num_rows=10)
    open_writer(url).compact()
    path = tmp_path / "s" / "ledger" / "snapshot" / "zarr.json"
    node = json.loads(path.read_text())
    node["attributes"]["committed"] = [[0, 5]]  # claims units the records do not have
    path.write_text(json.dumps(node))
    r = StoreReader(url)
    assert r.ledger_source == "listing (snapshot fails its checksum)" and r.committed_units == {
        0,
        1,
        2,
    }
    assert "ignored: snapshot fails its checksum" in verify_store(url)["ledger_snapshot"]


def _open_requests(url) -> dict:
    """kvstore reads and lists (TensorStore's counters) spent constructing a StoreReader."""
    names = ("/tensorstore/kvstore/file/read", "/tensorstore/kvstore/file/list")

    def counts():
        found = {
            m["name"]: m["values"][0]["value"]
            for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/")
            if m["name"] in names
        }
        return {n: found.get(n, 0) for n in names}

    before = counts()
    StoreReader(url)
    after = counts()
    return {n.rsplit("/", 1)[1]: after[n] - before[n] for n in names}


def test_open_cost_with_snapshot_does_not_grow_with_units(tmp_path, make_schema):
    costs = []
    for n in (4, 64):
        schema = make_schema(K=0, layers=(), T=2, R=1)
        url = str(tmp_path / f"s{n}")
        w = create_store(url, schema, num_rows=n)
        for u in range(n):
            w.write_unit(u, tokens=np.zeros((1, 2), np.int32))
        w.compact()
        costs.append(_open_requests(url))
    assert costs[0] == costs[1] and costs[0]["list"] <= 1, costs
