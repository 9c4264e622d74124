"""Store inspection: manifest, arrays, commit progress and bytes on disk.

(Named ``inspection`` rather than ``inspect`` so it never shadows the
standard library module.)

Bytes on disk are summed from the files of each array (file:// stores only;
other kvstores report None). Bytes per token divide them by the tokens of
the rows whose shard files exist, so a half-written store reports the cost
of what it holds.
"""

import os

from store import layout, profiles
from store.reader import StoreReader


def inspect_store(url: str) -> dict:
    """Describes a store.

    Args:
        url: the store's path or URL.

    Returns:
        {"url", "manifest", "num_rows", "num_units", "committed_units", "committed_rows",
         "arrays": [{"name", "shape", "dtype", "shard_shape", "chunk_shape", "codecs",
                     "bytes_on_disk", "bytes_per_token"}],
         "bytes_on_disk", "bytes_per_token"}.
    """
    reader = StoreReader(url, allow_partial=True)
    schema = reader.schema
    T = schema.seq_len
    R = schema.rows_per_unit
    committed_rows = int(reader.committed_rows().size)
    root = layout.local_path(reader.url)
    kv = layout.open_kvstore(reader.url)
    arrays = []
    total = 0
    for spec in profiles.for_store(schema, reader.manifest).arrays(schema):
        meta = layout.read_json(kv, spec.name + "/zarr.json") or {}
        shard = meta.get("codecs", [{}])[0].get("configuration", {})
        entry = {
            "name": spec.name,
            "shape": meta.get("shape"),
            "dtype": meta.get("data_type"),
            "shard_shape": meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape"),
            "chunk_shape": shard.get("chunk_shape"),
            "codecs": ["sharding_indexed"] + [c["name"] for c in shard.get("codecs", [])],
            "bytes_on_disk": None,
            "bytes_per_token": None,
        }
        if root is not None:
            nbytes, rows_present = _array_disk_usage(
                os.path.join(root, spec.name), R, reader.num_rows
            )
            entry["bytes_on_disk"] = nbytes
            entry["bytes_per_token"] = nbytes / (rows_present * T) if rows_present else None
            total += nbytes
        arrays.append(entry)
    per_token = [a["bytes_per_token"] for a in arrays]
    return {
        "url": reader.url,
        "manifest": reader.manifest,
        "num_rows": reader.num_rows,
        "num_units": reader.num_units,
        "committed_units": len(reader.committed_units),
        "committed_rows": committed_rows,
        "arrays": arrays,
        "bytes_on_disk": total if root is not None else None,
        "bytes_per_token": sum(per_token) if per_token and None not in per_token else None,
    }


def _array_disk_usage(path: str, rows_per_unit: int, num_rows: int) -> tuple[int, int]:
    """(bytes of the array's chunk files, rows covered by existing shards)."""
    nbytes, rows = 0, 0
    chunks = os.path.join(path, "c")
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            nbytes += os.path.getsize(full)
            parts = os.path.relpath(full, chunks).split(os.sep)
            if parts[0].isdigit():  # c/<unit>/0/...: one shard file per unit
                unit = int(parts[0])
                rows += max(0, min((unit + 1) * rows_per_unit, num_rows) - unit * rows_per_unit)
    return nbytes, rows
