"""Store verification: finds missing, partial, corrupt and invalid work units.

For every unit in ``[0, num_units)``:

* no commit record and no shard files     -> ``missing``
* no commit record but some shard files   -> ``partial`` (a writer died mid-unit)
* record whose row range / schema fingerprint / array list is wrong,
  a chunk failing its crc32c, or encoded bytes whose sha256 differs from
  the record                              -> ``corrupt``
* bytes intact but values out of contract -> ``invalid``: tokens or ids
  outside [0, V), log-probs not sorted descending or > 0 (-inf allowed for
  slots a top-p truncation dropped), sampled draws breaking their contract
  (store/sampled.py), non-finite activations.

The ledger snapshot (store/snapshot.py), if any, must agree with the commit
records; a disagreement makes ``ok`` False and is reported as
``ledger_snapshot``.

Units are read in row blocks of at most ``MAX_BLOCK_BYTES`` so that verifying
full-size units (hundreds of MB) stays within memory; the sha256 is updated
block by block (rows are the leading dimension, so this hashes the same bytes
as the writer did).
"""
import hashlib

import numpy as np

from store import errors, layout, ledger, profiles, sampled, snapshot
from store.reader import StoreReader

MAX_BLOCK_BYTES = 256 << 20


def verify_store(url) -> dict:
    """Checks every work unit of a store.

    Args:
        url: the store's path or URL.

    Returns:
        {"url", "ok", "num_rows", "num_units", "committed_units", "bad_units": [
            {"unit", "rows": [start, stop], "status", "detail"}], "ledger_snapshot": None or why
        it disagrees}; ``ok`` is True iff every unit is committed and sound and the snapshot agrees.

    Raises:
        StoreNotFoundError: no store at ``url``.
    """
    reader = StoreReader(url, allow_partial=True)
    schema = reader.schema
    profile = profiles.for_store(schema, reader.manifest)
    specs = {s.name: s for s in profile.arrays(schema)}
    kv = layout.open_kvstore(reader.url)
    # The records themselves, not the snapshot the reader may have used: they are the truth.
    committed = {u for u in ledger.committed_units(kv) if u < reader.num_units}
    # Shard keys are only needed to tell partial from missing units.
    keys = set() if len(committed) == reader.num_units else {k.decode() for k in kv.list().result()}
    records = ledger.read_many(kv, sorted(committed))
    R = schema.rows_per_unit
    bad = []
    for unit in range(reader.num_units):
        rows = [unit * R, min((unit + 1) * R, reader.num_rows)]

        def report(status, detail):
            bad.append({"unit": unit, "rows": rows, "status": status, "detail": detail})

        record = records.get(unit)
        if record is None:
            present = [n for n, s in specs.items()
                       if layout.shard_key(n, unit, 1 + len(s.inner_shape)) in keys]
            if present:
                report("partial", f"no commit record, but data for {', '.join(sorted(present))}; re-write the unit")
            else:
                report("missing", "no commit record and no data; write the unit")
            continue
        problem = _check_record(record, rows, reader.manifest["schema_sha256"], specs)
        if problem is None:
            problem = _check_unit(reader, profile, specs, rows, record)
        if problem is not None:
            report(*problem)
    stale = snapshot.disagreement(kv, reader.num_units)
    return {"url": reader.url, "ok": not bad and stale is None, "num_rows": reader.num_rows,
            "num_units": reader.num_units, "committed_units": len(committed), "bad_units": bad,
            "ledger_snapshot": stale}


def _check_record(record, rows, schema_sha, specs):
    if record.get("format") != ledger.RECORD_FORMAT or record.get("rows") != rows:
        return "corrupt", f"commit record rows {record.get('rows')} != unit rows {rows}; re-write the unit"
    if record.get("schema_sha256") != schema_sha:
        return "corrupt", "commit record is from another schema (fingerprint differs); re-write the unit"
    if set(record.get("arrays", {})) != set(specs):
        return "corrupt", f"commit record lists arrays {sorted(record.get('arrays', {}))}, expected {sorted(specs)}"
    return None


def _check_unit(reader, profile, specs, rows, record):
    start, stop = rows
    max_row_bytes = max(s.row_bytes for s in specs.values())
    block = max(1, MAX_BLOCK_BYTES // max(1, max_row_bytes * 2))
    digests = {name: hashlib.sha256() for name in specs}
    for a in range(start, stop, block):
        b = min(stop, a + block)
        try:
            stored = reader.read_stored(np.arange(a, b), list(specs))
        except errors.CorruptStoreError as e:
            return "corrupt", f"rows {a}..{b}: {e}"
        for name, x in stored.items():
            want = record["arrays"][name]
            if str(x.dtype) != want["dtype"] or list(x.shape[1:]) != want["shape"][1:]:
                return "corrupt", f"{name} has dtype/shape {x.dtype}{list(x.shape)}, record says {want}"
            digests[name].update(memoryview(np.ascontiguousarray(x)).cast("B"))
        problem = _check_values(reader.schema, profile, stored)
        if problem:
            return "invalid", f"rows {a}..{b}: {problem}"
    for name, h in digests.items():
        if h.hexdigest() != record["arrays"][name]["sha256"]:
            return "corrupt", f"{name} bytes differ from the commit record's sha256; re-write the unit"
    return None


def _check_values(schema, profile, stored):
    V = schema.vocab_size
    tokens = stored["tokens"]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        return f"tokens outside [0, {V})"
    if schema.k:
        ids, lp = profile.decode_topk(stored, vocab_size=V)
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            return f"topk ids outside [0, {V})"
        if np.isnan(lp).any() or (lp > 0).any():
            return "topk log-probs NaN or > 0"
        if (lp[..., 1:] > lp[..., :-1]).any():
            return "topk log-probs not sorted descending"
    if schema.samples:
        problem = sampled.contract_problem(*sampled.decode(profile, stored, schema.samples, V), schema.samples, V)
        if problem:
            return problem
    for layer in schema.hidden_layers:
        if not np.isfinite(profile.decode_hidden(layer, stored, np.float32)).all():
            return f"hidden/{layer} has non-finite values"
    return None
