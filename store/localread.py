"""Direct reads of uncompressed shards on local disk (the exact profile's hot path).

Why: measured on the 2-core dev box (bench/store_bench.py), TensorStore's
file kvstore spends ~3x the CPU of a plain ``pread`` on multi-MB chunk
reads and then copies the chunk into the output array once more. For arrays
whose inner codecs are exactly ``bytes`` (little endian) + ``crc32c`` on a
``file://`` store, this module reads the Zarr v3 sharding format itself:

* the shard index (the last ``16 * n + 4`` bytes: ``n`` little-endian
  (offset, nbytes) uint64 pairs, then their crc32c) is read and checked;
* each needed inner chunk is read with ``os.preadv`` straight into the output
  array (plus its 4-byte crc32c trailer) when the chunk is needed whole, else
  into a scratch buffer; its crc32c is checked with google-crc32c.

A chunk that fails its checksum, or is missing from a committed unit, raises
CorruptStoreError. Everything else (zstd arrays, remote kvstores) goes through
TensorStore. tests/store/test_store_localread.py checks both paths return
identical arrays and that corruption is caught by both.
"""
import os

import google_crc32c
import numpy as np

from store import errors

_EMPTY = np.uint64(2**64 - 1)
_LITTLE_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}


def eligible(meta: dict) -> bool:
    """Whether an array's zarr.json metadata has the layout this module reads."""
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return False
    conf = codecs[0]["configuration"]
    plain = [_LITTLE_BYTES, {"name": "crc32c"}]
    inner_full = list(conf["chunk_shape"][1:]) == list(meta["shape"][1:])
    return (conf.get("codecs") == plain and conf.get("index_codecs") == plain
            and conf.get("index_location", "end") == "end" and inner_full
            and meta.get("chunk_key_encoding", {}).get("name") == "default")


def _crc(x: np.ndarray) -> int:
    # google-crc32c accepts a C-contiguous numpy array (not a memoryview).
    return google_crc32c.value(x)


class LocalArrayReader:
    """Reads row ranges of one sharded, uncompressed array from local files."""

    def __init__(self, array_dir: str, meta: dict):
        self.dir = array_dir
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.chunk_rows = meta["codecs"][0]["configuration"]["chunk_shape"][0]
        self.chunks_per_shard = self.shard_rows // self.chunk_rows
        self.chunk_bytes = self.chunk_rows * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._key_tail = "/".join(["0"] * (len(self.shape) - 1))

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as a new array, or into ``out`` (C-contiguous, that shape and dtype)."""
        if out is None:
            out = np.empty((stop - start,) + self.shape[1:], self.dtype)
        row = start
        while row < stop:
            shard = row // self.shard_rows
            shard_stop = min(stop, (shard + 1) * self.shard_rows)
            self._read_shard(shard, row, shard_stop, out[row - start:shard_stop - start])
            row = shard_stop
        return out

    def _path(self, shard: int) -> str:
        return os.path.join(self.dir, "c", str(shard), *self._key_tail.split("/"))

    def _read_shard(self, shard, start, stop, out):
        path = self._path(shard)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise errors.CorruptStoreError(
                f"shard file {path} is missing for a committed unit; run `python -m store repair STORE` "
                "and re-run the dump (it re-writes the unit)") from None
        try:
            index = self._read_index(fd, path)
            base = shard * self.shard_rows
            first, last = (start - base) // self.chunk_rows, (stop - 1 - base) // self.chunk_rows
            trailer = bytearray(4)
            for c in range(first, last + 1):
                offset, nbytes = index[c]
                if offset == _EMPTY or nbytes != self.chunk_bytes + 4:
                    raise errors.CorruptStoreError(
                        f"inner chunk {c} of {path} is missing or has {nbytes} bytes; run `python -m store "
                        "verify` and re-write the unit")
                c0 = base + c * self.chunk_rows
                a, b = max(start, c0), min(stop, c0 + self.chunk_rows)
                # A whole chunk lands directly in the output (no copy); a
                # partial one goes through a scratch buffer (the crc covers the chunk).
                whole = a == c0 and b == c0 + self.chunk_rows
                target = out[a - start:b - start] if whole else np.empty(
                    (self.chunk_rows,) + self.shape[1:], self.dtype)
                got = os.preadv(fd, [memoryview(target).cast("B"), trailer], int(offset))
                if got != self.chunk_bytes + 4 or _crc(target) != int.from_bytes(trailer, "little"):
                    raise errors.CorruptStoreError(
                        f"inner chunk {c} of {path} fails its crc32c checksum; run `python -m store repair STORE` "
                        "and re-run the dump (it re-writes the unit)")
                if not whole:
                    out[a - start:b - start] = target[a - c0:b - c0]
        finally:
            os.close(fd)

    def _read_index(self, fd, path) -> np.ndarray:
        size = self.chunks_per_shard * 16 + 4
        end = os.fstat(fd).st_size
        raw = os.pread(fd, size, end - size) if end >= size else b""
        if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise errors.CorruptStoreError(
                f"shard index of {path} is truncated or fails its crc32c; run `python -m store repair STORE` "
                "and re-run the dump (it re-writes the unit)")
        return np.frombuffer(raw, "<u8", count=self.chunks_per_shard * 2).reshape(-1, 2)
