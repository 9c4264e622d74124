"""Commit records: one small JSON object per committed work unit.

A unit is committed iff ``ledger/unit_NNNNNNNN/zarr.json`` exists: each
record is an empty Zarr group whose attributes are the record, so plain
zarr-python walks the hierarchy without tripping over foreign objects. The writer
deletes the record before touching a unit's arrays and writes it *last*,
after every array write has completed (the file kvstore makes each write
durable and atomic: temp file + fsync + rename). A killed writer therefore
leaves the unit uncommitted, never half-committed, and since every unit has
its own key, concurrent writers of distinct units never contend.

Un-committing a unit that has a record (a re-write, ``repair``, ``resize``)
first writes a *tombstone* ``ledger/uncommitted/unit_NNNNNNNN_<uuid>/zarr.json``
and then deletes the record, so a ledger snapshot (store/snapshot.py) that
still lists the unit is overridden; tombstones have unique keys so that a
compaction deletes exactly the ones it has taken into account.

The record holds the unit's row range, the schema fingerprint, and the
sha256, dtype and shape of every encoded array slice, so ``verify`` can tell
corrupt data (bytes that decode but differ) from stale or foreign data. It
carries no timestamp, so re-writing a unit rewrites an identical record.
"""

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable

import numpy as np
import tensorstore as ts

PREFIX = "ledger/"
RECORD_FORMAT = "distill-teacher-store/commit/1"
TOMBSTONE_PREFIX = PREFIX + "uncommitted/"
TOMBSTONE_FORMAT = "distill-teacher-store/uncommit/1"


def record_key(unit: int) -> str:
    return f"{PREFIX}unit_{unit:08d}/zarr.json"


def array_digest(x: np.ndarray) -> str:
    """sha256 of the C-order little-endian bytes of an encoded array."""
    x = np.ascontiguousarray(x)
    if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("<"))
    return hashlib.sha256(memoryview(x).cast("B")).hexdigest()  # type: ignore[arg-type]  # ndarray is a Buffer; its numpy stub lacks __buffer__


def make_record(unit: int, rows: tuple, schema_sha256: str, encoded: dict) -> dict:
    """The commit record of a unit whose encoded arrays are ``encoded``."""
    return {
        "format": RECORD_FORMAT,
        "unit": unit,
        "rows": [int(rows[0]), int(rows[1])],
        "schema_sha256": schema_sha256,
        "arrays": {
            name: {"dtype": str(x.dtype), "shape": list(x.shape), "sha256": array_digest(x)}
            for name, x in sorted(encoded.items())
        },
    }


def encode_record(record: dict) -> bytes:
    node = {"zarr_format": 3, "node_type": "group", "attributes": record}
    return json.dumps(node, sort_keys=True, indent=1).encode()


class CorruptRecord:
    """A commit record that exists but does not decode (a damaged file): never "committed".

    ``verify`` reports it as ``corrupt record``; ``repair`` un-commits the unit
    (its data cannot be checked without the record); a writer re-writes it.
    """

    def __init__(self, why: str):
        self.why = why

    def __bool__(self) -> bool:
        return False  # `if record:` never takes a corrupt record for a commit

    def __repr__(self) -> str:
        return f"CorruptRecord({self.why!r})"


def decode_record(raw: bytes) -> "dict | CorruptRecord":
    """A record from its zarr.json bytes, or CorruptRecord saying why it is not one."""
    try:
        node = json.loads(raw)
    except ValueError:
        return CorruptRecord("not valid JSON (truncated or damaged)")
    if (
        not isinstance(node, dict)
        or node.get("zarr_format") != 3
        or node.get("node_type") != "group"
        or not isinstance(node.get("attributes"), dict)
    ):
        return CorruptRecord("not a Zarr group node with attributes")
    return node["attributes"]


def _decode(result: ts.KvStore.ReadResult) -> "dict | CorruptRecord | None":
    return None if result.state == "missing" else decode_record(bytes(result.value))


def write(kv: ts.KvStore, record: dict) -> None:
    """Writes a commit record (the unit becomes visible to readers)."""
    kv.write(record_key(record["unit"]), encode_record(record)).result()


def uncommit(kv: ts.KvStore, unit: int) -> None:
    """Un-commits a unit (before it is re-written, repaired or invalidated by a resize).

    A unit that has a record gets a tombstone first (see the module docstring);
    one without a record costs one read.
    """
    if read(kv, unit) is not None:  # a CorruptRecord too: it may be listed by a snapshot
        key = f"{TOMBSTONE_PREFIX}unit_{unit:08d}_{uuid.uuid4().hex}/zarr.json"
        # The parent group node keeps the hierarchy walkable by zarr-python.
        kv.write(TOMBSTONE_PREFIX + "zarr.json", encode_record({})).result()
        kv.write(key, encode_record({"format": TOMBSTONE_FORMAT, "unit": unit})).result()
    delete(kv, unit)


def delete(kv: ts.KvStore, unit: int) -> None:
    """Deletes a unit's record only (no tombstone: a snapshot listing it goes stale; use ``uncommit``)."""
    delete_keys(kv, [record_key(unit)])


def read(kv: ts.KvStore, unit: int) -> "dict | CorruptRecord | None":
    """A unit's record, None if uncommitted, or a (falsy) CorruptRecord if its file does not decode."""
    return _decode(kv.read(record_key(unit)).result())


def read_many(kv: ts.KvStore, units: Iterable[int]) -> dict:
    """{unit: record, None or CorruptRecord}, read concurrently."""
    futures = {u: kv.read(record_key(u)) for u in units}
    return {u: _decode(f.result()) for u, f in futures.items()}


def committed_units(kv: ts.KvStore, start: int | None = None, stop: int | None = None) -> set[int]:
    """Units in [start, stop) with a commit record (one list operation, no record reads)."""
    lo = PREFIX + ("unit_" if start is None else f"unit_{start:08d}")
    hi = PREFIX + ("unit`" if stop is None else f"unit_{stop:08d}")
    units = set()
    for key in kv.list(ts.KvStore.KeyRange(inclusive_min=lo, exclusive_max=hi)).result():
        unit = _unit_of(key.decode()[len(PREFIX) :], lambda node: node)
        if unit is not None:
            units.add(unit)
    return units


def tombstones(kv: ts.KvStore) -> dict[str, int]:
    """{tombstone key: unit} (one list operation)."""
    out = {}
    for key in kv.list(
        ts.KvStore.KeyRange(
            inclusive_min=TOMBSTONE_PREFIX, exclusive_max=TOMBSTONE_PREFIX[:-1] + "0"
        )
    ).result():
        unit = _unit_of(
            key.decode()[len(TOMBSTONE_PREFIX) :],
            lambda node: node.partition("_")[0] if "_" in node else "",
        )
        if unit is not None:
            out[key.decode()] = unit
    return out


def _unit_of(name: str, number_part: Callable[[str], str]) -> int | None:
    """The unit of a ledger node name ``unit_<...>/zarr.json`` (None: not such a node).

    ``number_part`` picks the unit number out of ``<...>`` (records: all of it;
    tombstones: the part before their ``_<uuid>``, none without one).
    """
    if not (name.startswith("unit_") and name.endswith("/zarr.json")):
        return None
    try:
        return int(number_part(name[len("unit_") : -len("/zarr.json")]))
    except ValueError:
        return None


def delete_keys(kv: ts.KvStore, keys: Iterable[str]) -> None:
    """Deletes ``keys`` (``.../zarr.json`` of ledger nodes) concurrently."""
    keys = list(keys)
    for f in [kv.write(k, None) for k in keys]:
        f.result()
    spec = kv.spec().to_json()
    if spec["driver"] == "file":
        # The file kvstore leaves the empty unit_N/ directory, which plain
        # zarr-python would then warn about when walking the hierarchy.
        for k in keys:
            try:
                os.rmdir(os.path.join(spec["path"], os.path.dirname(k)))
            except OSError:
                pass
