"""Direct reads of sharded arrays on local disk (the loaders' hot path).

Why: measured on the 2-core dev box, TensorStore's file kvstore spends ~3x
the CPU of a plain ``pread`` on multi-MB chunk reads and then copies the chunk
into the output once more; its zstd decode of a compact/lean ``hidden/<l>``
batch took ~5x numcodecs' (bench/loader_bench.py). For arrays whose inner
codecs are ``bytes`` (little endian, or endian-less for 1-byte dtypes, as
TensorStore writes them), optionally ``zstd``, then ``crc32c`` on a
``file://`` store, this module reads the Zarr v3 sharding format itself:

* the shard index (the last ``16 * n + 4`` bytes: ``n`` little-endian
  (offset, nbytes) uint64 pairs, then their crc32c) is read and checked;
* an uncompressed inner chunk is read with ``os.preadv`` straight into the
  output (plus its 4-byte crc32c trailer) when it is needed whole, else into
  a scratch buffer; its crc32c is checked with google-crc32c;
* a zstd inner chunk is read whole (compressed bytes + trailer); the crc32c
  codec comes after zstd in the chain, so the trailer covers the COMPRESSED
  bytes and is checked before decoding; numcodecs' Zstd (the zstd library
  zarr-python uses) then decodes straight into the output (or a scratch
  buffer for a partial chunk).

The chunks of one read (every run of rows, every array) are planned first,
then read and decoded on a small thread pool: preadv, crc32c and zstd all
release the GIL, so on the 2-core box two chunks decode at once.
A chunk that fails its checksum or does not decode to its size, or is missing
from a committed unit, raises CorruptStoreError. Everything else (other
codecs, remote kvstores) goes through TensorStore.
tests/store/test_store_localread.py checks both paths return identical arrays
and that corruption is caught by both.
"""

import concurrent.futures
import os
import stat
import threading
from collections.abc import Iterable, Sequence

import google_crc32c
import numcodecs
import numpy as np

from store import errors

_EMPTY = np.uint64(2**64 - 1)
_LITTLE_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC = {"name": "crc32c"}
_REPAIR = "run `python -m store repair STORE` and re-run the dump (it re-writes the unit)"
# Chunk reads run on this many threads (one process-wide pool, rebuilt after a
# fork: Grain workers unpickle readers in forked processes); 1 reads inline.
# Scaled with the host's cores: preadv, crc32c and zstd release the GIL, so a
# batch's chunks (every run of rows x every array) read in parallel up to the
# cores there are, and a trainer host has many more than the 2-core dev box
# (the device hosts: 16) while a fixed 4 left most of them idle. Capped at 16:
# a loader batch rarely has more chunks than that, and past the cores (or past
# the page cache's memory bandwidth) more threads only contend. Measured on
# the shared 2-core box (load ~4): a 4-row lean hidden read 6.8 ms inline,
# 3.9 ms on 2 threads; compact's no faster (no idle core to use).
THREADS = min(16, os.cpu_count() or 1)
_pool = None
_pool_pid = None
_pool_lock = threading.Lock()


def _zstd_codec(codec: dict) -> bool:
    conf = codec.get("configuration", {})
    return codec.get("name") == "zstd" and set(conf) <= {"level", "checksum"}


def eligible(meta: dict) -> bool:
    """Whether an array's zarr.json metadata has a layout this module reads."""
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return False
    conf = codecs[0]["configuration"]
    inner = list(conf.get("codecs", []))
    # The bytes codec has no endianness for 1-byte dtypes (TensorStore drops it).
    one_byte = np.dtype(meta["data_type"]).itemsize == 1
    bytes_ok = bool(inner) and (
        inner[0] == _LITTLE_BYTES or (one_byte and inner[0] == {"name": "bytes"})
    )
    middle_ok = inner[1:-1] == [] or (len(inner) == 3 and _zstd_codec(inner[1]))
    inner_full = list(conf["chunk_shape"][1:]) == list(meta["shape"][1:])
    return (
        bytes_ok
        and middle_ok
        and inner[-1:] == [_CRC]
        and conf.get("index_codecs") == [_LITTLE_BYTES, _CRC]
        and conf.get("index_location", "end") == "end"
        and inner_full
        and meta.get("chunk_key_encoding", {}).get("name") == "default"
    )


def _crc(x: np.ndarray) -> int:
    # google-crc32c accepts a C-contiguous numpy array (not a memoryview).
    return google_crc32c.value(x)


def _thread_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="localread")
            _pool_pid = os.getpid()
        return _pool


class LocalArrayReader:
    """Reads row ranges of one sharded array (uncompressed or zstd) from local files."""

    def __init__(self, array_dir: str, meta: dict, name: str | None = None):
        self.dir = array_dir
        self.name = name or os.path.basename(array_dir)  # for error messages
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        conf = meta["codecs"][0]["configuration"]
        self.shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.chunk_rows = conf["chunk_shape"][0]
        self.chunks_per_shard = self.shard_rows // self.chunk_rows
        self.chunk_bytes = (
            self.chunk_rows * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        )
        self.zstd = len(conf["codecs"]) == 3
        self._zstd = numcodecs.Zstd() if self.zstd else None
        self._key_tail = ["0"] * (len(self.shape) - 1)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as a new array, or into ``out`` (C-contiguous, that shape and dtype)."""
        if out is None:
            out = np.empty((stop - start,) + self.shape[1:], self.dtype)
        read_runs([(self, [(start, stop)], out)])
        return out

    def _path(self, shard: int) -> str:
        return os.path.join(self.dir, "c", str(shard), *self._key_tail)

    def _plan(
        self, start: int, stop: int, out: np.ndarray, fds: list[int], tasks: list[tuple]
    ) -> None:
        """Appends the chunk tasks of rows [start, stop) -> ``out``; opens shard files into ``fds``."""
        row = start
        while row < stop:
            shard = row // self.shard_rows
            shard_stop = min(stop, (shard + 1) * self.shard_rows)
            self._plan_shard(
                shard, row, shard_stop, out[row - start : shard_stop - start], fds, tasks
            )
            row = shard_stop

    def _plan_shard(
        self,
        shard: int,
        start: int,
        stop: int,
        out: np.ndarray,
        fds: list[int],
        tasks: list[tuple],
    ) -> None:
        path = self._path(shard)
        what = f"array {self.name} of unit {shard}"
        try:
            # O_NONBLOCK: a FIFO put where a shard should be must not block the open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise errors.CorruptStoreError(
                f"{what}: shard file {path} is missing for a committed unit; {_REPAIR}"
            ) from None
        except OSError as e:
            raise errors.CorruptStoreError(
                f"{what}: shard file {path} cannot be opened ({e.strerror}); {_REPAIR}"
            ) from None
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.CorruptStoreError(
                f"{what}: {path} is a directory or special file, not a shard; {_REPAIR}"
            )
        index = self._read_index(fd, path)
        base = shard * self.shard_rows
        first, last = (start - base) // self.chunk_rows, (stop - 1 - base) // self.chunk_rows
        for c in range(first, last + 1):
            offset, nbytes = int(index[c][0]), int(index[c][1])
            if index[c][0] == _EMPTY or (
                nbytes != self.chunk_bytes + 4 if not self.zstd else nbytes <= 4
            ):
                raise errors.CorruptStoreError(
                    f"{what}: inner chunk {c} of {path} is missing or has {nbytes} bytes; {_REPAIR}"
                )
            c0 = base + c * self.chunk_rows
            a, b = max(start, c0), min(stop, c0 + self.chunk_rows)
            tasks.append(
                (self, fd, path, c, offset, nbytes, out[a - start : b - start], a - c0, b - c0)
            )

    def _read_chunk(
        self,
        fd: int,
        path: str,
        c: int,
        offset: int,
        nbytes: int,
        dest: np.ndarray,
        a: int,
        b: int,
    ) -> None:
        """Reads (and decodes) inner chunk ``c`` and puts its rows [a, b) into ``dest``."""
        # A whole chunk lands directly in the output (no copy); a partial one
        # goes through a scratch buffer (the crc covers the whole chunk).
        whole = a == 0 and b == self.chunk_rows
        target = dest if whole else np.empty((self.chunk_rows,) + self.shape[1:], self.dtype)
        bad = f"inner chunk {c} of {path} fails its crc32c checksum; {_REPAIR}"
        # ndarray has the buffer protocol; numpy's stubs do not declare it (the ignores below).
        if self.zstd:
            assert self._zstd is not None  # made in __init__ when self.zstd
            raw = np.empty(nbytes, np.uint8)
            if (
                os.preadv(fd, [raw], offset) != nbytes  # type: ignore[list-item]
                or _crc(raw[:-4]) != int.from_bytes(raw[-4:], "little")
            ):
                raise errors.CorruptStoreError(bad)
            try:
                self._zstd.decode(raw[:-4], out=memoryview(target).cast("B"))  # type: ignore[arg-type]
            except (
                RuntimeError,
                ValueError,
            ) as e:  # a frame that does not decode, or to another size
                raise errors.CorruptStoreError(
                    f"inner chunk {c} of {path} does not zstd-decode to {self.chunk_bytes} bytes ({e}); "
                    f"{_REPAIR}"
                ) from None
        else:
            trailer = bytearray(4)
            got = os.preadv(fd, [memoryview(target).cast("B"), trailer], offset)  # type: ignore[arg-type]
            if got != self.chunk_bytes + 4 or _crc(target) != int.from_bytes(trailer, "little"):
                raise errors.CorruptStoreError(bad)
        if not whole:
            dest[...] = target[a:b]

    def _read_index(self, fd: int, path: str) -> np.ndarray:
        size = self.chunks_per_shard * 16 + 4
        end = os.fstat(fd).st_size
        raw = os.pread(fd, size, end - size) if end >= size else b""
        if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise errors.CorruptStoreError(
                f"shard index of {path} is truncated or fails its crc32c; {_REPAIR}"
            )
        return np.frombuffer(raw, "<u8", count=self.chunks_per_shard * 2).reshape(-1, 2)


def read_runs(
    jobs: Iterable[tuple[LocalArrayReader, Sequence[tuple[int, int]], np.ndarray]],
) -> None:
    """Reads several arrays' row runs at once.

    Args:
        jobs: [(LocalArrayReader, [(start, stop), ...], out)]: each array's runs
            land in consecutive row slices of its ``out`` (C-contiguous).

    Raises:
        CorruptStoreError: a missing shard, or a chunk or index that fails its checks.
    """
    fds: list[int] = []
    tasks: list[tuple] = []
    try:
        for arr, runs, out in jobs:
            at = 0
            for a, b in runs:
                arr._plan(a, b, out[at : at + b - a], fds, tasks)
                at += b - a
        if len(tasks) <= 1 or THREADS <= 1:
            for t in tasks:
                t[0]._read_chunk(*t[1:])
            return
        futures = [_thread_pool().submit(t[0]._read_chunk, *t[1:]) for t in tasks]
        # Every task finishes before the files close (and before an error is
        # raised), so no thread writes into an output the caller already has.
        concurrent.futures.wait(futures)
        for f in futures:
            f.result()
    finally:
        for fd in fds:
            os.close(fd)
