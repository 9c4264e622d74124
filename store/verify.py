"""Store verification: finds damaged metadata and missing, partial, corrupt and invalid work units.

First the metadata (store/metadata.py): the root manifest and its checksummed
copy, and every array's and group's ``zarr.json`` compared with what the
manifest gives. Each mismatch is reported in ``metadata`` naming its file;
units are then not judged (their bytes would be read through wrong
metadata): ``repair`` rewrites the metadata, then judges them.

Then, for every unit in ``[0, num_units)`` (the row count is the manifest's):

* no commit record and no shard files     -> ``missing``
* no commit record but some shard files   -> ``partial`` (a writer died mid-unit)
* a commit record that does not decode    -> ``corrupt record``
* record whose unit / row range / schema fingerprint / array list is wrong,
  a chunk missing or failing its crc32c, or encoded bytes whose sha256
  differs from the record                 -> ``corrupt``
* bytes intact but values out of contract -> ``invalid``: tokens or ids
  outside [0, V), a loss mask other than 0/1, a token log-prob that is not
  finite and <= 0 (or not 0 at the last position), log-probs not sorted descending or > 0 (-inf allowed for
  slots a top-p truncation dropped), sampled draws breaking their contract
  (store/sampled.py), non-finite activations.

The ledger snapshot (store/snapshot.py), if any, must agree with the commit
records; a disagreement (or a snapshot that fails its checksum) makes ``ok``
False and is reported as ``ledger_snapshot``.

Units are read in row blocks of at most ``MAX_BLOCK_BYTES`` so that verifying
full-size units (hundreds of MB) stays within memory; the sha256 is updated
block by block (rows are the leading dimension, so this hashes the same bytes
as the writer did).
"""

import hashlib
from typing import Any

import numpy as np
import tensorstore as ts

from store import errors, layout, ledger, metadata, profiles, rollout, sampled, snapshot
from store.layout import ArraySpec
from store.profiles import Profile
from store.reader import StoreReader
from store.schema import StoreSchema

MAX_BLOCK_BYTES = 256 << 20
CORRUPT_RECORD = "corrupt record"


def check_metadata(url: str) -> tuple[ts.KvStore, metadata.Manifest, int, list, list]:
    """The store's manifest and metadata problems.

    Returns:
        (kvstore, metadata.Manifest, num_rows, problems [{"file", "problem"}], non_canonical keys).

    Raises:
        StoreNotFoundError: no store at ``url``.
        CorruptStoreError: the manifest is lost (root and copy both damaged).
    """
    url = layout.normalize_url(url)
    metadata.check_exists(url)
    kv = layout.open_kvstore(url)
    opened = metadata.open_manifest(kv, url)
    rows = metadata.num_rows(kv, opened, url)
    expected = metadata.expected_nodes(opened.schema, opened.manifest, rows)
    problems, non_canonical = metadata.check_nodes(kv, expected, url)
    return kv, opened, rows, opened.problems + problems, non_canonical


def verify_store(url: str) -> dict:
    """Checks the metadata, then every work unit of a store.

    Args:
        url: the store's path or URL.

    Returns:
        {"url", "ok", "num_rows", "num_units", "committed_units", "metadata": [{"file", "problem"}],
         "units_checked": bool, "bad_units": [{"unit", "rows": [start, stop], "status", "detail", "array"}],
         "ledger_snapshot": None or why it disagrees}; ``ok`` is True iff the metadata is sound, every
        unit is committed and sound and the snapshot agrees. With metadata problems the units are
        not judged (``units_checked`` False).

    Raises:
        StoreNotFoundError: no store at ``url``.
        CorruptStoreError: the manifest is lost (nothing to verify against).
    """
    url = layout.normalize_url(url)
    kv, opened, num_rows, meta_problems, _ = check_metadata(url)
    schema = opened.schema
    R = schema.rows_per_unit
    num_units = (num_rows + R - 1) // R
    # The records themselves, not the snapshot the reader may have used: they are the truth.
    committed = {u for u in ledger.committed_units(kv) if u < num_units}
    stale = snapshot.disagreement(kv, num_units)
    report: dict[str, Any] = {
        "url": url,
        "ok": False,
        "num_rows": num_rows,
        "num_units": num_units,
        "committed_units": len(committed),
        "metadata": meta_problems,
        "units_checked": False,
        "bad_units": [],
        "ledger_snapshot": stale,
    }
    if meta_problems:
        return report
    reader = StoreReader(url, allow_partial=True)
    profile = profiles.for_store(schema, opened.manifest)
    specs = {s.name: s for s in profile.arrays(schema)}
    # Shard keys are only needed to tell partial from missing units.
    keys = set() if len(committed) == num_units else {k.decode() for k in kv.list().result()}
    records = ledger.read_many(kv, sorted(committed))
    bad = report["bad_units"]
    for unit in range(num_units):
        rows = [unit * R, min((unit + 1) * R, num_rows)]

        def add(  # this iteration's unit
            status: str,
            detail: str,
            array: str | None = None,
            unit: int = unit,
            rows: list[int] = rows,
        ) -> None:
            bad.append(
                {"unit": unit, "rows": rows, "status": status, "detail": detail, "array": array}
            )

        record = records.get(unit)
        if record is None:
            present = [
                n
                for n, s in specs.items()
                if layout.shard_key(n, unit, 1 + len(s.inner_shape)) in keys
            ]
            if present:
                add(
                    "partial",
                    f"no commit record, but data for {', '.join(sorted(present))}; re-write the unit",
                )
            else:
                add("missing", "no commit record and no data; write the unit")
            continue
        if isinstance(record, ledger.CorruptRecord):
            add(
                CORRUPT_RECORD,
                f"{ledger.record_key(unit)} is {record.why}; repair un-commits the unit and "
                "the dump re-writes it",
            )
            continue
        problem = _check_record(record, unit, rows, opened.manifest["schema_sha256"], specs)
        if problem is None:
            problem = _check_unit(reader, profile, specs, rows, record)
        if problem is not None:
            add(*problem)
    report["units_checked"] = True
    report["ok"] = not bad and stale is None
    return report


def _check_record(
    record: dict, unit: int, rows: list[int], schema_sha: str, specs: dict[str, ArraySpec]
) -> tuple | None:
    """None, or (status, detail, array) for a record that cannot be the commit of this unit."""
    if (
        record.get("format") != ledger.RECORD_FORMAT
        or record.get("unit") != unit
        or record.get("rows") != rows
    ):
        return (
            "corrupt",
            f"commit record format/unit/rows {record.get('format')!r}/{record.get('unit')!r}/"
            f"{record.get('rows')!r} != this unit's {unit}/{rows}; re-write the unit",
        )
    if record.get("schema_sha256") != schema_sha:
        return (
            "corrupt",
            "commit record is from another schema (fingerprint differs); re-write the unit",
        )
    arrays = record.get("arrays")
    if not isinstance(arrays, dict) or set(arrays) != set(specs):
        names = sorted(arrays) if isinstance(arrays, dict) else arrays
        return "corrupt", f"commit record lists arrays {names!r}, expected {sorted(specs)}"
    for name, entry in arrays.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("sha256"), str)
        ):
            return (
                "corrupt",
                f"commit record's entry for {name} is malformed; re-write the unit",
                name,
            )
    return None


def _check_unit(
    reader: StoreReader,
    profile: Profile,
    specs: dict[str, ArraySpec],
    rows: list[int],
    record: dict,
) -> tuple | None:
    start, stop = rows
    max_row_bytes = max(s.row_bytes for s in specs.values())
    block = max(1, MAX_BLOCK_BYTES // max(1, max_row_bytes * 2))
    digests = {name: hashlib.sha256() for name in specs}
    for a in range(start, stop, block):
        b = min(stop, a + block)
        try:
            stored = reader.read_stored(np.arange(a, b), list(specs))
        except errors.CorruptStoreError as e:
            return "corrupt", f"rows {a}..{b}: {e}", _failing_array(reader, a, b, specs)
        for name, x in stored.items():
            want = record["arrays"][name]
            if str(x.dtype) != want["dtype"] or list(x.shape[1:]) != want["shape"][1:]:
                return (
                    "corrupt",
                    f"{name} has dtype/shape {x.dtype}{list(x.shape)}, record says {want}",
                    name,
                )
            # ndarray has the buffer protocol; numpy's stubs do not declare it here.
            digests[name].update(memoryview(np.ascontiguousarray(x)).cast("B"))  # type: ignore[arg-type]
        problem = _check_values(reader.schema, profile, stored)
        if problem:
            return "invalid", f"rows {a}..{b}: {problem}"
    for name, h in digests.items():
        if h.hexdigest() != record["arrays"][name]["sha256"]:
            return (
                "corrupt",
                f"{name} bytes differ from the commit record's sha256; re-write the unit",
                name,
            )
    return None


def _failing_array(reader: StoreReader, a: int, b: int, specs: dict[str, ArraySpec]) -> str | None:
    """The first array whose rows [a, b) fail to read (after a read of all of them failed)."""
    for name in specs:
        try:
            reader.read_stored(np.arange(a, b), [name])
        except errors.CorruptStoreError:
            return name
    return None


def _check_values(
    schema: StoreSchema, profile: Profile, stored: dict[str, np.ndarray]
) -> str | None:
    V = schema.vocab_size
    tokens = stored["tokens"]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        return f"tokens outside [0, {V})"
    if schema.loss_mask:
        problem = rollout.mask_problem(stored[rollout.LOSS_MASK])
        if problem:
            return problem
    if schema.token_logprob:
        problem = rollout.logprob_problem(stored[rollout.TOKEN_LOGPROB])
        if problem:
            return problem
    if schema.k:
        ids, lp = profile.decode_topk(stored, vocab_size=V)
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            return f"topk ids outside [0, {V})"
        if np.isnan(lp).any() or (lp > 0).any():
            return "topk log-probs NaN or > 0"
        if (lp[..., 1:] > lp[..., :-1]).any():
            return "topk log-probs not sorted descending"
    if schema.samples:
        problem = sampled.contract_problem(
            *sampled.decode(profile, stored, schema.samples, V), schema.samples, V
        )
        if problem:
            return problem
    for layer in schema.hidden_layers:
        if not np.isfinite(profile.decode_hidden(layer, stored, np.float32)).all():
            return f"hidden/{layer} has non-finite values"
    return None
