"""Commit records: one small JSON object per committed work unit.

A unit is committed iff ``ledger/unit_NNNNNNNN/zarr.json`` exists: each
record is an empty Zarr group whose attributes are the record, so plain
zarr-python walks the hierarchy without tripping over foreign objects. The writer
deletes the record before touching a unit's arrays and writes it *last*,
after every array write has completed (the file kvstore makes each write
durable and atomic: temp file + fsync + rename). A killed writer therefore
leaves the unit uncommitted, never half-committed, and since every unit has
its own key, concurrent writers of distinct units never contend.

The record holds the unit's row range, the schema fingerprint, and the
sha256, dtype and shape of every encoded array slice, so ``verify`` can tell
corrupt data (bytes that decode but differ) from stale or foreign data. It
carries no timestamp, so re-writing a unit rewrites an identical record.
"""
import hashlib
import json
import os

import numpy as np
import tensorstore as ts

PREFIX = "ledger/"
RECORD_FORMAT = "distill-teacher-store/commit/1"


def record_key(unit: int) -> str:
    return f"{PREFIX}unit_{unit:08d}/zarr.json"


def array_digest(x: np.ndarray) -> str:
    """sha256 of the C-order little-endian bytes of an encoded array."""
    x = np.ascontiguousarray(x)
    if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("<"))
    return hashlib.sha256(memoryview(x).cast("B")).hexdigest()


def make_record(unit: int, rows: tuple, schema_sha256: str, encoded: dict) -> dict:
    """The commit record of a unit whose encoded arrays are ``encoded``."""
    return {
        "format": RECORD_FORMAT,
        "unit": unit,
        "rows": [int(rows[0]), int(rows[1])],
        "schema_sha256": schema_sha256,
        "arrays": {name: {"dtype": str(x.dtype), "shape": list(x.shape), "sha256": array_digest(x)}
                   for name, x in sorted(encoded.items())},
    }


def encode_record(record: dict) -> bytes:
    node = {"zarr_format": 3, "node_type": "group", "attributes": record}
    return json.dumps(node, sort_keys=True, indent=1).encode()


def _decode(result) -> dict | None:
    return None if result.state == "missing" else json.loads(result.value)["attributes"]


def write(kv: ts.KvStore, record: dict):
    """Writes a commit record (the unit becomes visible to readers)."""
    kv.write(record_key(record["unit"]), encode_record(record)).result()


def delete(kv: ts.KvStore, unit: int):
    """Un-commits a unit (before it is re-written or invalidated by a resize)."""
    kv.write(record_key(unit), None).result()
    if kv.url.startswith("file://"):
        # The file kvstore leaves the empty unit_N/ directory, which plain
        # zarr-python would then warn about when walking the hierarchy.
        try:
            os.rmdir(os.path.join(kv.path, os.path.dirname(record_key(unit))))
        except OSError:
            pass


def read(kv: ts.KvStore, unit: int) -> dict | None:
    """A unit's record, or None if uncommitted."""
    return _decode(kv.read(record_key(unit)).result())


def read_many(kv: ts.KvStore, units) -> dict:
    """{unit: record or None}, read concurrently."""
    futures = {u: kv.read(record_key(u)) for u in units}
    return {u: _decode(f.result()) for u, f in futures.items()}


def committed_units(kv: ts.KvStore) -> set[int]:
    """Units with a commit record (one list operation, no record reads)."""
    keys = kv.list(ts.KvStore.KeyRange(inclusive_min=PREFIX + "unit_",
                                       exclusive_max=PREFIX + "unit`")).result()
    units = set()
    for key in keys:
        name = key.decode()[len(PREFIX):]
        if name.startswith("unit_") and name.endswith("/zarr.json"):
            try:
                units.add(int(name[len("unit_"):-len("/zarr.json")]))
            except ValueError:
                continue
    return units
