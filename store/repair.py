"""Repair: bring a damaged store back to a state the same dump command completes, never deleting good data.

A dump skips committed units, so a bad unit stays bad until its commit
record is gone; and TensorStore reads a shard it is about to update (a
failing checksum would abort the re-write), so a bad unit's shards go too.
But data is only deleted when *its own bytes* fail *its own record*: damage
to what every unit is read through (the manifest, an array's zarr.json) is
repaired by rewriting that metadata from the manifest (store/metadata.py).
In order:

1. directories where a file belongs (a shard, a zarr.json, a record) are
   removed (local stores);
2. the manifest: a damaged root ``zarr.json`` is restored from its
   checksummed copy ``ledger/manifest/zarr.json`` (or the copy from a sound
   root); every array's and group's ``zarr.json`` that differs from what the
   manifest gives (in meaning, or only in bytes) is rewritten;
3. the units, judged by ``verify`` against the now sound metadata: every
   ``corrupt``, ``invalid``, ``partial`` or ``corrupt record`` unit is
   un-committed (``ledger.uncommit``: a tombstone, then the record is
   deleted) and its shards are deleted. When every committed unit (two or
   more) fails the same way, nothing is deleted: that is damage shared by
   all units, not to each unit's data, and repair stops and says so;
4. commit records that mean the same but whose bytes are not the ones the
   writer writes are rewritten; the ledger snapshot is re-compacted when it
   is damaged, stale, or units were un-committed.

``missing`` units need nothing (the dump writes them). ``dry_run`` plans
without writing (units are judged only once the metadata is sound, so a
dry run on damaged metadata says so). Every action is logged, before it is
taken, in a repair journal inside the store:
``ledger/repairs/<UTC time>_<id>/zarr.json`` (a Zarr group whose attributes
are ``{"format", "time", "host", "dry_run", "status", "actions"}``; status
``started`` until the last action is done, then ``done`` or ``stopped``).
"""

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any

import tensorstore as ts

from store import layout, ledger, metadata, profiles, remote, snapshot
from store.verify import CORRUPT_RECORD, verify_store

REPAIRABLE = ("corrupt", "invalid", "partial", CORRUPT_RECORD)
JOURNAL_PREFIX = ledger.PREFIX + "repairs/"
JOURNAL_FORMAT = "distill-teacher-store/repair-journal/1"


class _Journal:
    """The actions of one repair run, written into the store before each is taken."""

    def __init__(self, kv: ts.KvStore, url: str, dry_run: bool) -> None:
        self.kv, self.url, self.dry_run = kv, url, dry_run
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.key = f"{JOURNAL_PREFIX}{stamp}_{uuid.uuid4().hex[:8]}/zarr.json"
        self.body: dict[str, Any] = {
            "format": JOURNAL_FORMAT,
            "time": stamp,
            "host": socket.gethostname(),
            "dry_run": dry_run,
            "status": "started",
            "actions": [],
        }

    @property
    def actions(self) -> list:
        return self.body["actions"]

    # Callable[..., object]: the callers' lambdas bind their loop variables as default arguments.
    def act(self, what: str, do: Callable[..., object] | None = None) -> None:
        """Logs ``what`` (written to the store first), then runs ``do`` unless this is a dry run."""
        self.actions.append(what)
        if self.dry_run:
            return
        self._save()
        if do is not None:
            do()

    def finish(self, status: str) -> None:
        self.body["status"] = status
        if self.actions and not self.dry_run:
            self._save()

    def _save(self) -> None:
        try:
            self.kv.write(JOURNAL_PREFIX + "zarr.json", metadata.node_bytes({})).result()
            self.kv.write(self.key, metadata.node_bytes(self.body)).result()
        except ValueError as e:
            raise remote.storage_error(e, self.url, "writing the repair journal of") from None


def repair_store(url: str, dry_run: bool = False) -> dict:
    """Repairs a store so that the same dump command completes it (see the module docstring).

    Args:
        url: the store's path or URL.
        dry_run: only plan: print what would be done, change nothing.

    Returns:
        {"url", "dry_run", "status": "done" | "nothing to do" | "stopped" | "units not judged",
         "why": None or one line, "actions": [one line each], "repaired": [{"unit", "rows", "status"}],
         "missing_units": int, "journal": the journal key or None, "verify": verify's report (after
         the metadata step; None when units were not judged)}.

    Raises:
        StoreNotFoundError: no store at ``url``.
        CorruptStoreError: the manifest is lost (root and copy both damaged): nothing to repair from.
    """
    url = layout.normalize_url(url)
    metadata.check_exists(url)
    kv = layout.open_kvstore(url)
    journal = _Journal(kv, url, bool(dry_run))
    opened = metadata.open_manifest(kv, url)
    schema, manifest = opened.schema, opened.manifest
    out: dict[str, Any] = {
        "url": url,
        "dry_run": bool(dry_run),
        "status": "done",
        "why": None,
        "actions": journal.actions,
        "repaired": [],
        "missing_units": 0,
        "journal": None,
        "verify": None,
    }
    _clear_manifest_keys(kv, url, journal)
    root_want = metadata.node_bytes(manifest)
    if opened.root_raw != root_want:
        why = "; ".join(
            p["problem"].split("; ")[0] for p in opened.problems if p["file"] == metadata.ROOT_KEY
        )
        source = "the manifest copy" if why else "the manifest"
        journal.act(
            f"rewrite {metadata.ROOT_KEY} from {source} ({why or 'same manifest, other bytes'})",
            lambda: _put(kv, url, metadata.ROOT_KEY, root_want),
        )
    if not opened.legacy and opened.copy_raw != metadata.copy_bytes(manifest):
        journal.act(
            f"rewrite {metadata.COPY_KEY} from {metadata.ROOT_KEY}",
            lambda: _put(kv, url, metadata.COPY_KEY, metadata.copy_bytes(manifest)),
        )
    rows = metadata.num_rows(kv, opened, url)
    R = schema.rows_per_unit
    num_units = (rows + R - 1) // R
    specs = profiles.for_store(schema, manifest).arrays(schema)
    shard_keys = lambda unit: [
        layout.shard_key(s.name, unit, 1 + len(s.inner_shape)) for s in specs
    ]
    expected = metadata.expected_nodes(schema, manifest, rows)
    file_keys = list(expected) + [snapshot.KEY] + [ledger.record_key(u) for u in range(num_units)]
    _clear_directories(
        url, file_keys + [k for u in range(num_units) for k in shard_keys(u)], journal, kv
    )
    problems, non_canonical = metadata.check_nodes(kv, expected, url)
    for key in sorted({p["file"] for p in problems} | set(non_canonical)):
        why = next(
            (p["problem"] for p in problems if p["file"] == key), "same meaning, other bytes"
        )
        journal.act(
            f"rewrite {key} from the manifest ({why})",
            lambda key=key: _put(kv, url, key, expected[key]),
        )
    if dry_run and journal.actions:
        out["status"] = "units not judged"
        out["why"] = "units are judged once the metadata above is rewritten; run without --dry-run"
        return out
    report = verify_store(url)
    out["verify"] = report
    out["missing_units"] = sum(b["status"] == "missing" for b in report["bad_units"])
    bad = [b for b in report["bad_units"] if b["status"] in REPAIRABLE]
    failed = [b for b in bad if b["status"] in ("corrupt", "invalid")]
    if (
        len(failed) >= 2
        and len(failed) == report["committed_units"]
        and len({(b["status"], b["array"]) for b in failed}) == 1
    ):
        first = failed[0]
        out["status"], out["why"] = (
            "stopped",
            (
                f"every committed unit ({len(failed)}) fails the same way ({first['status']}"
                f"{', array ' + first['array'] if first['array'] else ''}: {first['detail'][:160]}); that is damage "
                "shared by all units (metadata, package version), not to each unit's data, so nothing was deleted; "
                "if the data really is damaged, dump again to a new store"
            ),
        )
        journal.finish("stopped")
        return out
    for b in bad:
        unit = b["unit"]

        def uncommit(unit: int = unit) -> None:
            ledger.uncommit(kv, unit)
            for key in shard_keys(unit):
                _remove(kv, url, key)

        journal.act(
            f"un-commit unit {unit} (rows {b['rows'][0]}..{b['rows'][1]}, {b['status']}: "
            f"{b['detail'][:200]}) and delete its shards",
            uncommit,
        )
        out["repaired"].append({"unit": unit, "rows": b["rows"], "status": b["status"]})
    _normalize_records(kv, url, journal, {b["unit"] for b in report["bad_units"]}, num_units)
    if (
        report["ledger_snapshot"] is not None
        or (bad and snapshot.load(kv)[0] is not None)
        or _snapshot_non_canonical(kv)
    ):
        why = report["ledger_snapshot"] or (
            "units were un-committed" if bad else "same content, other bytes"
        )
        journal.act(f"re-compact the ledger snapshot ({why})", lambda: snapshot.compact(kv))
    if not journal.actions:
        out["status"] = "nothing to do"
    journal.finish(out["status"])
    out["journal"] = journal.key if journal.actions and not dry_run else None
    return out


def _put(kv: ts.KvStore, url: str, key: str, value: bytes) -> None:
    _remove_directory(url, key)
    try:
        kv.write(key, value).result()
    except ValueError as e:
        raise remote.storage_error(e, url, f"writing {key} of") from None


def _remove(kv: ts.KvStore, url: str, key: str) -> None:
    """Deletes the object at ``key`` (on a local store also a directory or special file there)."""
    if not _remove_directory(url, key):
        try:
            kv.write(key, None).result()
        except ValueError as e:
            raise remote.storage_error(e, url, f"deleting {key} of") from None


def _remove_directory(url: str, key: str) -> bool:
    """On a local store, removes a directory at ``key`` (where a file belongs); True if there was one."""
    root = layout.local_path(url)
    path = None if root is None else os.path.join(root, key)
    if path is not None and os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
        return True
    return False


def _clear_manifest_keys(kv: ts.KvStore, url: str, journal: _Journal) -> None:
    for key in (metadata.ROOT_KEY, metadata.COPY_KEY):
        _clear_directories(url, [key], journal, kv)


def _clear_directories(url: str, keys: Iterable[str], journal: _Journal, kv: ts.KvStore) -> None:
    """Plans (and takes) the removal of directories at keys where a file belongs (local stores)."""
    root = layout.local_path(url)
    if root is None:
        return
    for key in keys:
        path = os.path.join(root, key)
        if os.path.isdir(path) and not os.path.islink(path):
            journal.act(
                f"remove the directory {key} (a file belongs there)",
                lambda key=key: _remove_directory(url, key),
            )


def _normalize_records(
    kv: ts.KvStore, url: str, journal: _Journal, skip: Collection[int], num_units: int
) -> None:
    """Rewrites sound records whose bytes are not the writer's (same content: e.g. whitespace changed)."""
    units = sorted(u for u in ledger.committed_units(kv) if u < num_units and u not in skip)
    futures = {u: kv.read(ledger.record_key(u)) for u in units}
    for unit, future in futures.items():
        raw = future.result()
        if raw.state == "missing":
            continue
        record = ledger.decode_record(bytes(raw.value))
        want = ledger.encode_record(record) if isinstance(record, dict) else None
        if want is not None and want != bytes(raw.value):
            journal.act(
                f"rewrite {ledger.record_key(unit)} (same record, other bytes)",
                lambda unit=unit, want=want: _put(kv, url, ledger.record_key(unit), want),
            )


def _snapshot_non_canonical(kv: ts.KvStore) -> bool:
    runs, _ = snapshot.load(kv)
    if runs is None:
        return False
    return bytes(kv.read(snapshot.KEY).result().value) != snapshot.encode(runs)
