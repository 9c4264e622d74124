"""The ledger snapshot: which units are committed, in one object, checked against the records.

Why: listing one commit record per unit costs one object-store request per
1,000 units (a C4-sized store has ~1.1M units). ``compact`` writes
``ledger/snapshot/zarr.json`` (an empty Zarr group; attributes)::

    {"format": "distill-teacher-store/ledger-snapshot/1",
     "committed": [[start, stop], ...],   # half-open runs of committed units, ascending
     "count": n,                          # units in those runs
     "sha256": "..."}                     # of the canonical JSON of "committed"

The per-unit records stay the source of truth. Opening a store with a
snapshot costs a constant number of requests on a complete store:

* read the snapshot (its count and sha256 must match, else it is ignored and
  the records are listed as before);
* list the tombstones (``ledger.uncommit`` leaves one before deleting the
  record of a unit the snapshot may list) and re-read those units' records;
* list the records of the units the snapshot does not cover (commits made
  after it), one key-range list per gap (the whole tail past the first gap
  when there are many gaps).

``compact`` lists the tombstones *first*, then every record, writes the
snapshot, and deletes only the tombstones it listed; a tombstone written
meanwhile survives and still overrides the new snapshot. Run one compaction
at a time per store (the dump's driver or ``python -m store compact``).
``verify`` compares the snapshot's view with a full listing of the records and
reports a disagreement. Stores without a snapshot open as before.
"""

import hashlib
import json
from collections.abc import Iterable, Sequence

import tensorstore as ts

from store import ledger

KEY = ledger.PREFIX + "snapshot/zarr.json"
FORMAT = "distill-teacher-store/ledger-snapshot/1"
MAX_GAP_LISTS = 16


def to_runs(units: Iterable[int]) -> list[list[int]]:
    """Sorted half-open runs [[start, stop], ...] covering ``units``."""
    runs: list[list[int]] = []
    for u in sorted(units):
        if runs and runs[-1][1] == u:
            runs[-1][1] = u + 1
        else:
            runs.append([u, u + 1])
    return runs


def _sha(runs: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps(runs, separators=(",", ":")).encode()).hexdigest()


def compact(kv: ts.KvStore) -> dict:
    """Writes the snapshot from a full listing of the records; returns {"units", "runs", "tombstones_cleared"}."""
    tombs = ledger.tombstones(kv)  # first: see the module docstring
    runs = to_runs(ledger.committed_units(kv))
    count = write_runs(kv, runs)
    ledger.delete_keys(kv, tombs)
    return {"units": count, "runs": len(runs), "tombstones_cleared": len(tombs)}


def write_runs(kv: ts.KvStore, runs: Iterable[Sequence[int]]) -> int:
    """Writes a snapshot of ``runs`` (compact's last step; the ledger bench also uses it to
    synthesize a 1M-unit snapshot without 1M record files). Returns the unit count."""
    runs = [[int(a), int(b)] for a, b in runs]
    kv.write(KEY, encode(runs)).result()
    return sum(b - a for a, b in runs)


def encode(runs: Sequence[Sequence[int]]) -> bytes:
    """The snapshot's zarr.json bytes for ``runs`` (``repair`` compares stored bytes with them)."""
    body = {
        "format": FORMAT,
        "committed": runs,
        "count": sum(b - a for a, b in runs),
        "sha256": _sha(runs),
    }
    node = {"zarr_format": 3, "node_type": "group", "attributes": body}
    return json.dumps(node, sort_keys=True).encode()


def load(kv: ts.KvStore) -> tuple[list | None, str]:
    """(runs, "") from a sound snapshot, or (None, why it is not used)."""
    result = kv.read(KEY).result()
    if result.state == "missing":
        return None, "no snapshot"
    try:
        body = json.loads(result.value)["attributes"]
        runs = body["committed"]
        ok = (
            body.get("format") == FORMAT
            and body.get("sha256") == _sha(runs)
            and body.get("count") == sum(b - a for a, b in runs)
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    return (runs, "") if ok else (None, "snapshot fails its checksum")


def committed_units(kv: ts.KvStore, num_units: int) -> tuple[set[int], str]:
    """(committed units below ``num_units``, how they were found: "snapshot" or "listing (why)")."""
    runs, why = load(kv)
    if runs is None:
        return {u for u in ledger.committed_units(kv) if u < num_units}, f"listing ({why})"
    units: set[int] = set()
    for a, b in runs:
        units.update(range(a, min(b, num_units)))
    touched = set(ledger.tombstones(kv).values())
    units -= touched
    gaps, at = [], 0
    for a, b in runs + [[num_units, num_units]]:
        if a > at and at < num_units:
            gaps.append((at, min(a, num_units)))
        at = max(at, b)
    if len(gaps) > MAX_GAP_LISTS:
        gaps = [(gaps[0][0], num_units)]
    for a, b in gaps:
        units |= ledger.committed_units(kv, a, b)
    units |= {
        u
        for u, rec in ledger.read_many(kv, sorted(u for u in touched if u < num_units)).items()
        if isinstance(rec, dict)
    }
    return units, "snapshot"  # every part is already below num_units


def disagreement(kv: ts.KvStore, num_units: int) -> str | None:
    """None if the snapshot (if any) gives the same committed units as the records, else a one-line why."""
    runs, why = load(kv)
    if runs is None:
        return None if why == "no snapshot" else f"ledger snapshot ignored: {why}"
    via_snapshot, _ = committed_units(kv, num_units)
    truth = {u for u in ledger.committed_units(kv) if u < num_units}
    if via_snapshot == truth:
        return None
    extra, lost = sorted(via_snapshot - truth)[:5], sorted(truth - via_snapshot)[:5]
    return f"ledger snapshot disagrees with the commit records (claims {extra}, misses {lost})"
