"""On-disk layout: URLs, array specs, chunking, codecs, TensorStore specs.

Layout decisions (measured in bench/store_bench.py):

* One Zarr v3 group per store; arrays are grouped as ``tokens``,
  ``topk/*``, ``hidden/<layer>`` and ``hidden_aux/<layer>/*`` (per-token
  scales and other side data of the activation encoding), plus a ``ledger``
  group whose ``unit_NNNNNNNN`` sub-groups' attributes are the commit records.
* Every array's first dimension is the row (N). The outer (shard) chunk is
  exactly one work unit's rows, so one work unit writes one file per array
  and two writers never touch the same file (the file kvstore writes each
  shard atomically: temp file + rename).
* Inside a shard the ``sharding_indexed`` codec stores row-aligned inner
  chunks of up to ``INNER_CHUNK_TARGET_BYTES`` (at least one row), each
  followed by a ``crc32c`` checksum; the shard index carries its own crc32c.
  Reads of a single row touch one inner chunk (a byte-range read).
* ``zstd`` is used only where a profile asks for it (compact): exact arrays
  are raw bytes so reads are memcpy + checksum.
"""

import dataclasses
import json
import os
import threading
from typing import Any

import tensorstore as ts

from store import errors, remote

INNER_CHUNK_TARGET_BYTES = 4 << 20
ZSTD_LEVEL = 3
GROUP_NODE = {"zarr_format": 3, "node_type": "group"}

_URL_SCHEMES = ("file://", "memory://", "gs://", "s3://")
# TensorStore's retry policy for object stores, s3 and gcs (see store/remote.py): up to 6
# retries, back-off 0.1 s doubling to 1 s, so an unreachable endpoint fails
# in ~4 s instead of TensorStore's default of 32 retries over minutes.
S3_RETRIES = {"max_retries": 6, "initial_delay": "0.1s", "max_delay": "1s"}
_context_lock = threading.Lock()
_context = None
_context_pid = None


def context() -> ts.Context:
    """The process-wide TensorStore context.

    Shared so that ``memory://`` stores are visible to every handle of a
    process and the cache/IO pools are not duplicated; re-created after a
    fork because contexts do not survive one.
    """
    global _context, _context_pid
    with _context_lock:
        if _context is None or _context_pid != os.getpid():
            # No chunk cache: every read goes to storage, so verify sees the
            # bytes on disk and a reader never serves data another process
            # re-wrote; rows are read once per epoch anyway.
            _context = ts.Context(
                {
                    "cache_pool": {"total_bytes_limit": 0},
                    "s3_request_retries": S3_RETRIES,
                    "gcs_request_retries": S3_RETRIES,
                }
            )
            _context_pid = os.getpid()
        return _context


def normalize_url(url: str | os.PathLike[str]) -> str:
    """Returns a TensorStore kvstore URL ending in '/' for a path or URL."""
    url = os.fspath(url)
    if not url:
        raise errors.StoreNotFoundError(
            "empty store URL; pass a path or a file://, memory://, gs://, s3:// URL"
        )
    if "://" in url:
        if not url.startswith(_URL_SCHEMES):
            raise errors.StoreNotFoundError(
                f"unsupported store URL {url!r}; use a local path or one of {', '.join(_URL_SCHEMES)}"
            )
    else:
        url = "file://" + os.path.abspath(url)
    return url.rstrip("/") + "/"


def local_path(url: str) -> str | None:
    """The filesystem directory of a file:// URL, else None."""
    url = normalize_url(url)
    return url[len("file://") :] if url.startswith("file://") else None


def kvstore_spec(url: str) -> str | dict[str, Any]:
    """TensorStore kvstore spec of a store URL (s3:// gets its endpoint, see store/remote.py)."""
    return remote.kvstore_spec(normalize_url(url))


def open_kvstore(url: str) -> ts.KvStore:
    """Opens the store's root as a key-value store."""
    try:
        return ts.KvStore.open(kvstore_spec(url), context=context()).result()
    except ValueError as e:
        raise remote.storage_error(e, normalize_url(url), "opening") from None


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One stored array: ``[N, *inner_shape]`` of ``dtype``.

    Attributes:
        name: path inside the group, e.g. "topk/ids".
        inner_shape: shape of one row.
        dtype: Zarr v3 data type name (readable by zarr-python).
        dims: dimension names after "row".
        zstd: whether inner chunks are zstd-compressed.
    """

    name: str
    inner_shape: tuple
    dtype: str
    dims: tuple
    zstd: bool = False

    @property
    def row_bytes(self) -> int:
        n = 1
        for s in self.inner_shape:
            n *= s
        return n * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    return {
        "int8": 1,
        "uint8": 1,
        "int16": 2,
        "uint16": 2,
        "float16": 2,
        "int32": 4,
        "uint32": 4,
        "float32": 4,
    }[dtype]


def inner_chunk_rows(spec: ArraySpec, rows_per_unit: int) -> int:
    """Largest divisor of rows_per_unit whose chunk stays within the target size."""
    best = 1
    for r in range(1, rows_per_unit + 1):
        if rows_per_unit % r == 0 and r * spec.row_bytes <= INNER_CHUNK_TARGET_BYTES:
            best = r
    return best


def array_metadata(spec: ArraySpec, num_rows: int, rows_per_unit: int) -> dict:
    """Zarr v3 array metadata (zarr.json) for ``spec``."""
    inner = [bytes_codec()]
    if spec.zstd:
        inner.append({"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}})
    inner.append({"name": "crc32c"})
    rows = inner_chunk_rows(spec, rows_per_unit)
    return {
        "shape": [num_rows, *spec.inner_shape],
        "data_type": spec.dtype,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [rows_per_unit, *spec.inner_shape]},
        },
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [rows, *spec.inner_shape],
                    "codecs": inner,
                    "index_codecs": [bytes_codec(), {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
        "dimension_names": ["row", *spec.dims],
    }


def bytes_codec() -> dict:
    return {"name": "bytes", "configuration": {"endian": "little"}}


def array_url(url: str, name: str) -> str:
    return normalize_url(url) + name + "/"


def shard_key(name: str, unit: int, ndim: int) -> str:
    """Key (relative to the store root) of a unit's shard of array ``name``."""
    return "/".join([name, "c", str(unit)] + ["0"] * (ndim - 1))


def open_array(
    url: str, spec: ArraySpec, *, create_rows: int | None = None, rows_per_unit: int | None = None
) -> ts.TensorStore:
    """Opens (or, given create_rows, creates-or-opens) one array."""
    # Chunks equal to the fill value (all zeros) are still written: a committed
    # unit then always has every chunk, so a missing one means corruption.
    # A missing chunk reads as an error, not as the fill value (zeros): on any kvstore.
    ts_spec = {
        "driver": "zarr3",
        "kvstore": kvstore_spec(array_url(url, spec.name)),
        "store_data_equal_to_fill_value": True,
        "fill_missing_data_reads": False,
    }
    kwargs: dict[str, Any] = {}
    if create_rows is not None:
        if rows_per_unit is None:
            raise TypeError("open_array: create_rows needs rows_per_unit")
        ts_spec["metadata"] = array_metadata(spec, create_rows, rows_per_unit)
        kwargs = {"create": True, "open": True}
    try:
        return ts.open(ts_spec, context=context(), **kwargs).result()
    except ValueError as e:
        raise errors.CorruptStoreError(
            f"cannot open array {spec.name!r} of store {url}: {str(e).splitlines()[0]}; "
            f"run `python -m store verify {url}` or recreate the store"
        ) from None


def write_group(kv: ts.KvStore, path: str, attributes: dict) -> None:
    """Writes a group's zarr.json (``path`` '' is the root)."""
    node = dict(GROUP_NODE, attributes=attributes)
    key = (path.rstrip("/") + "/" if path else "") + "zarr.json"
    try:
        kv.write(key, json.dumps(node, sort_keys=True, indent=1).encode()).result()
    except ValueError as e:
        raise remote.storage_error(e, remote.kv_url(kv), f"writing {key} of") from None


def read_json(kv: ts.KvStore, key: str) -> Any:
    """The JSON object at ``key``, or None when missing."""
    try:
        result = kv.read(key).result()
    except ValueError as e:
        raise remote.storage_error(e, remote.kv_url(kv), f"reading {key} of") from None
    if result.state == "missing":
        return None
    return json.loads(result.value)
