"""Repair: un-commit the units ``verify`` finds bad, so the same dump command re-writes them.

A dump skips committed units, so a corrupt unit stays corrupt until its
commit record is gone. Deleting the record alone is not enough: the shard
files are still there, and TensorStore reads a shard it is about to update
(a failing checksum then aborts the re-write). ``repair_store`` therefore, for
every ``corrupt``, ``invalid`` or ``partial`` unit:

1. un-commits it (``ledger.uncommit``: a tombstone, then the record is
   deleted, so a ledger snapshot that lists the unit is overridden);
2. deletes the unit's shard of every array;

and, if the store has a ledger snapshot, re-compacts it so that it lists
exactly the committed units again. ``missing`` units need nothing.
"""
from store import layout, ledger, profiles, snapshot
from store.reader import StoreReader
from store.verify import verify_store

REPAIRABLE = ("corrupt", "invalid", "partial")


def repair_store(url) -> dict:
    """Verifies the store and un-commits its bad units.

    Args:
        url: the store's path or URL.

    Returns:
        {"url", "repaired": [{"unit", "rows", "status"}], "missing_units": int,
         "ledger_snapshot": None or the compaction result, "verify": verify's report (before)}.
    """
    report = verify_store(url)
    reader = StoreReader(url, allow_partial=True)
    kv = layout.open_kvstore(reader.url)
    specs = profiles.for_store(reader.schema, reader.manifest).arrays(reader.schema)
    repaired = []
    for bad in report["bad_units"]:
        if bad["status"] not in REPAIRABLE:
            continue
        unit = bad["unit"]
        ledger.uncommit(kv, unit)
        for f in [kv.write(layout.shard_key(s.name, unit, 1 + len(s.inner_shape)), None) for s in specs]:
            f.result()
        repaired.append({"unit": unit, "rows": bad["rows"], "status": bad["status"]})
    compacted = None
    if snapshot.load(kv)[0] is not None or report["ledger_snapshot"] is not None:
        compacted = snapshot.compact(kv)
    return {"url": reader.url, "repaired": repaired,
            "missing_units": sum(b["status"] == "missing" for b in report["bad_units"]),
            "ledger_snapshot": compacted, "verify": report}
