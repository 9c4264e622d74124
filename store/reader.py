"""Reading aligned rows: the trainer's (and Grain workers') view of a store.

``StoreReader`` snapshots the manifest and the committed units when it is
constructed (from the ledger snapshot when the store has a sound one: a
constant number of requests, see store/snapshot.py; else by listing the
commit records). It pickles to (url, allow_partial, snapshot) and opens its
TensorStore handles lazily, once per process (Grain workers unpickle it), under
a lock, so one reader can be shared by threads. A ``read`` issues one
TensorStore read future per (contiguous row run, stored array), all in
flight at once (the async I/O pool does the work while Python waits), then
decodes with numpy. Arrays of file:// stores whose chunks are uncompressed
or zstd (every array of the exact, compact and lean profiles) are instead
read with ``os.preadv`` straight into the output array (zstd chunks decoded
by numcodecs into it) by ``store.localread`` — same bytes, same crc32c checks,
far less CPU.

Data loaders should use the loader-style read (``hidden_normalized=True``,
16-bit hidden/log-probs, stored-dtype ids; see ``read``): for the exact
profile it returns the arrays it read from disk with no decode pass, which is
what keeps the read near raw disk/page-cache throughput
(bench/store_bench.py); the default float32 decode moves 2x the activation
bytes through memory.
"""

import os
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorstore as ts

from store import errors, layout, localread, metadata, profiles, remote, rollout, sampled, snapshot

# One stored array, opened: TensorStore's, or the local-file fast path (both read row ranges).
ArrayHandle = ts.TensorStore | localread.LocalArrayReader

# Arrays of local stores are read by store.localread when their codecs allow
# (about 4x less CPU than TensorStore's file kvstore, 5x faster zstd decode);
# tests and bench/loader_bench.py switch it off to compare both paths.
USE_LOCAL_READS = True
# The shard key of a unit ("<array>/c/<unit>/0...") inside a TensorStore error message.
_SHARD_IN_MESSAGE = re.compile(r"/c/(\d+)(?:/0)*\"")


class StoreReader:
    """Reads committed rows of a store.

    Args:
        url: local path or file:// memory:// gs:// s3:// URL.
        allow_partial: accept a store with uncommitted units (their rows stay unreadable).

    Raises:
        StoreNotFoundError: no store at ``url``.
        CorruptStoreError: the manifest or an array's zarr.json is damaged or
            disagrees with the manifest (``python -m store repair`` rewrites it).
        IncompleteStoreError: uncommitted units and ``allow_partial`` is False.
    """

    def __init__(self, url: str, allow_partial: bool = False) -> None:
        self.url = layout.normalize_url(url)
        self.allow_partial = bool(allow_partial)
        # The manifest and every array's metadata must agree (store/metadata.py): a
        # damaged zarr.json is refused here, never read through.
        kv, opened, self.num_rows = metadata.open_checked(self.url)
        self.manifest, self.schema = opened.manifest, opened.schema
        self._init_derived()
        R = self.schema.rows_per_unit
        self.num_units = (self.num_rows + R - 1) // R
        units, self.ledger_source = snapshot.committed_units(kv, self.num_units)
        self.committed_units = frozenset(units)
        missing = self.num_units - len(self.committed_units)
        if missing and not self.allow_partial:
            first = min(set(range(self.num_units)) - self.committed_units)
            raise errors.IncompleteStoreError(
                f"store {self.url} has {missing} of {self.num_units} work units uncommitted (first: unit "
                f"{first}, rows {first * R}..{min((first + 1) * R, self.num_rows)}); finish the dump, or "
                "pass allow_partial=True to read committed rows only"
            )

    def _init_derived(self) -> None:
        self._profile = profiles.for_store(self.schema, self.manifest)
        self._specs = {s.name: s for s in self._profile.arrays(self.schema)}
        self._arrays: dict | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_arrays", "_lock", "_profile", "_specs"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_derived()

    def _handles(self) -> dict:
        """{name: TensorStore or LocalArrayReader}, opened once per process."""
        if self._arrays is None:
            with self._lock:
                if self._arrays is None:
                    self._arrays = self._open_handles()
        return self._arrays

    def _open_handles(self) -> dict:
        handles: dict[str, ArrayHandle] = {}
        root = layout.local_path(self.url)
        kv = layout.open_kvstore(self.url) if root is not None and USE_LOCAL_READS else None
        for name, spec in self._specs.items():
            meta = layout.read_json(kv, name + "/zarr.json") if kv is not None else None
            if root is not None and meta is not None and localread.eligible(meta):
                handles[name] = localread.LocalArrayReader(os.path.join(root, name), meta, name)
            else:
                handles[name] = layout.open_array(self.url, spec)
        return handles

    def committed_rows(self) -> np.ndarray:
        """int64 indices of every readable row, ascending."""
        R = self.schema.rows_per_unit
        # Vectorized (a C4-sized store has ~1M units): every unit's R rows, then the
        # short last unit's rows past num_rows dropped.
        units = np.sort(np.fromiter(self.committed_units, np.int64, len(self.committed_units)))
        rows = (units[:, None] * R + np.arange(R, dtype=np.int64)).ravel()
        return rows[rows < self.num_rows]

    def default_fields(self) -> tuple:
        """Every field of the store: tokens, loss_mask / token_logprob (if stored), topk (if k > 0),
        sampled (if samples > 0), hidden/<l> per layer."""
        fields = ["tokens"]
        fields += list(rollout.field_arrays(self.schema))
        if self.schema.k:
            fields.append("topk")
        if self.schema.samples:
            fields.append("sampled")
        fields += [profiles.hidden_name(l) for l in self.schema.hidden_layers]
        return tuple(fields)

    def stored_names(
        self, fields: Iterable[str] | None = None, hidden_normalized: bool = False
    ) -> list:
        """The stored (encoded) arrays a ``read(rows, fields, hidden_normalized=...)`` reads, in order.

        With ``read_stored(rows, stored_names(...))`` a loader that decodes on the
        device gets exactly those arrays, undecoded (see ``profiles`` and the
        manifest's ``encodings`` for each one's decoding rule).
        """
        return self._stored_names(
            tuple(self.default_fields() if fields is None else fields),
            hidden_normalized=bool(hidden_normalized),
        )

    def _stored_names(self, fields: tuple[str, ...], hidden_normalized: bool = False) -> list:
        names = []
        for field in fields:
            if field == "tokens":
                names.append("tokens")
            elif field == rollout.LOSS_MASK:
                # A store without it reads as all ones (store/rollout.py): nothing to read.
                names += [rollout.LOSS_MASK] if self.schema.loss_mask else []
            elif field == rollout.TOKEN_LOGPROB and self.schema.token_logprob:
                names.append(field)
            elif field == "topk" and self.schema.k:
                names += self._profile.topk_array_names(self.schema)
            elif field == "sampled" and self.schema.samples:
                names += self._profile.sampled_array_names(self.schema)
            elif (
                field.startswith("hidden/")
                and field[len("hidden/") :].isdigit()
                and int(field[len("hidden/") :]) in self.schema.hidden_layers
            ):
                names += self._profile.hidden_array_names(
                    self.schema, int(field[len("hidden/") :]), normalized=hidden_normalized
                )
            else:
                raise errors.StoreInputError(
                    f"unknown field {field!r}; this store has fields {list(self.default_fields())}"
                )
        return names

    def _check_rows(self, rows: npt.ArrayLike) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise errors.StoreInputError(
                f"rows must be a 1-D sequence of integer row indices, got shape {rows.shape} dtype {rows.dtype}"
            )
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise errors.StoreInputError(
                f"row indices must be in [0, {self.num_rows}); got [{rows.min()}, {rows.max()}]"
            )
        units = np.unique(rows // self.schema.rows_per_unit)
        bad = [int(u) for u in units if int(u) not in self.committed_units]
        if bad:
            raise errors.IncompleteStoreError(
                f"rows requested from uncommitted work units {bad[:5]}; read only committed_rows()"
            )
        return rows

    def read(
        self,
        rows: npt.ArrayLike,
        fields: Iterable[str] | None = None,
        hidden_dtype: npt.DTypeLike = np.float32,
        hidden_normalized: bool = False,
        ids_dtype: npt.DTypeLike = np.int32,
        logprobs_dtype: npt.DTypeLike = np.float32,
    ) -> dict:
        """Reads and decodes rows.

        The defaults decode everything to int32 / float32 activations ``x``.
        A data loader that upcasts on device reads far less memory with
        ``hidden_normalized=True, hidden_dtype=np.float16,
        ids_dtype=reader.stored_ids_dtype, logprobs_dtype=np.float16``: for the
        exact profile every one of those arrays is then the stored array
        itself (read straight from disk into it; no decode pass at all).

        Args:
            rows: 1-D int row indices (any order; repeated rows allowed).
            fields: subset of ``default_fields()`` ("tokens", "loss_mask",
                "token_logprob", "topk", "sampled", "hidden/<l>"); None for all.
                "loss_mask" may be asked of any store: one without the array
                reads as all ones (store/rollout.py).
            hidden_dtype: numpy floating dtype of the activations.
            hidden_normalized: return each token's activation divided by its
                RMS, ``x / rms(x)`` (direction exact as stored, per-token
                scale dropped; the per-token RMS is then not even read). For
                losses that normalise the target per token anyway (HLD's
                ``normalized_mse``). exact: the stored float16 array
                (zero copy with ``hidden_dtype=np.float16``); compact:
                ``q * qstep`` with the outlier channels restored; lean: the
                de-rotated 6-level codes (store/lean.py).
            ids_dtype: integer dtype of the top-k and sampled ids: int32 (default) or the
                stored one, ``stored_ids_dtype`` (zero copy); any integer
                dtype that holds every id < vocab_size is accepted.
            logprobs_dtype: floating dtype of the top-k and sampled log-probs: float32
                (default) or float16 (exact: the stored array, zero copy;
                compact: decoded, then rounded to float16).

        Returns:
            {"tokens": int32[n,T], "loss_mask": uint8[n,T], "token_logprob": float32[n,T],
             "topk_ids": ids_dtype[n,T,K], "topk_logprobs": logprobs_dtype[n,T,K],
             "sampled_ids": ids_dtype[n,T,S], "sampled_counts": uint8[n,T,S],
             "sampled_logprobs": logprobs_dtype[n,T,S],
             "hidden/<l>": hidden_dtype[n,T,D]} for the requested fields.

        Raises:
            StoreInputError: an unknown field, bad rows or an unsupported dtype.
        """
        hidden_dtype = _float_dtype("hidden_dtype", hidden_dtype)
        logprobs_dtype = _float_dtype("logprobs_dtype", logprobs_dtype)
        ids_dtype = self._check_ids_dtype(ids_dtype)
        fields = tuple(self.default_fields() if fields is None else fields)
        names = self._stored_names(fields, hidden_normalized=bool(hidden_normalized))
        rows = self._check_rows(rows)
        stored = self._read_stored(rows, names)
        out = {}
        for field in fields:
            if field == "tokens":
                out["tokens"] = stored["tokens"]
            elif field == rollout.LOSS_MASK:
                out[field] = (
                    stored[field]
                    if self.schema.loss_mask
                    else rollout.all_ones(rows.size, self.schema.seq_len)
                )
            elif field == rollout.TOKEN_LOGPROB:
                out[field] = stored[field]
            elif field == "topk":
                out["topk_ids"], out["topk_logprobs"] = self._profile.decode_topk(
                    stored,
                    ids_dtype=ids_dtype,
                    logprobs_dtype=logprobs_dtype,
                    vocab_size=self.schema.vocab_size,
                )
            elif field == "sampled":
                out["sampled_ids"], out["sampled_counts"], out["sampled_logprobs"] = sampled.decode(
                    self._profile,
                    stored,
                    self.schema.samples,
                    self.schema.vocab_size,
                    ids_dtype=ids_dtype,
                    logprobs_dtype=logprobs_dtype,
                )
            else:
                out[field] = self._profile.decode_hidden(
                    int(field[len("hidden/") :]),
                    stored,
                    hidden_dtype,
                    normalized=bool(hidden_normalized),
                )
        return out

    @property
    def stored_ids_dtype(self) -> np.dtype:
        """The store's id dtype: uint16 if vocab_size <= 65,536, else int32.

        exact stores ids in it (reading in it is zero copy); compact and lean
        bit-pack them (store/bitpack.py) and unpack into it.
        """
        return np.dtype(profiles.ids_dtype(self.schema.vocab_size))

    def _check_ids_dtype(self, dtype: npt.DTypeLike) -> np.dtype:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if (
            dt is None
            or not np.issubdtype(dt, np.integer)
            or np.iinfo(dt).max < self.schema.vocab_size - 1
        ):
            raise errors.StoreInputError(
                f"ids_dtype={dtype!r} cannot hold ids below vocab_size={self.schema.vocab_size}; "
                f"use np.int32 or reader.stored_ids_dtype ({self.stored_ids_dtype})"
            )
        return dt

    def read_stored(self, rows: npt.ArrayLike, names: Iterable[str]) -> dict:
        """Reads the raw stored (encoded) arrays ``names`` at ``rows`` (for verify/bench)."""
        return self._read_stored(self._check_rows(rows), list(names))

    def _read_stored(self, rows: np.ndarray, names: list[str]) -> dict:
        arrays = self._handles()
        runs = _contiguous_runs(rows)
        # TensorStore reads first: they proceed on its I/O threads while this
        # thread does the local reads.
        futures = {
            name: [arrays[name][a:b].read() for a, b in runs]
            for name in names
            if not isinstance(arrays[name], localread.LocalArrayReader)
        }
        out, local = {}, []
        for name in names:
            if name not in futures:
                # Several runs (shuffled rows) land in one array: no concatenate copy.
                arr = arrays[name]
                out[name] = np.empty((rows.size,) + arr.shape[1:], arr.dtype)
                local.append((arr, runs, out[name]))
        # Every local chunk of this read (all arrays, all runs) at once, on localread's thread pool.
        localread.read_runs(local)
        for name, futs in futures.items():
            parts = []
            for (a, b), f in zip(runs, futs):
                try:
                    parts.append(f.result())
                except ValueError as e:
                    if remote.is_access_failure(e):
                        raise remote.storage_error(e, self.url, f"reading {name} of") from None
                    # Arrays are opened with fill_missing_data_reads=False (layout.open_array):
                    # a missing chunk of a committed unit is an error here, never zeros.
                    which = _failed_unit(str(e), a, b, self.schema.rows_per_unit)
                    missing = "is missing" if "NOT_FOUND" in str(e) else "fails to read"
                    raise errors.CorruptStoreError(
                        f"array {name} of {which} (rows {a}..{b}) of {self.url} {missing}: "
                        f"{str(e).splitlines()[0][:200]}; run `python -m store repair {self.url}` and re-run "
                        "the dump (it re-writes the bad units)"
                    ) from None
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return {name: out[name] for name in names}

    def require(
        self,
        seq_len: int | None = None,
        k: int | None = None,
        vocab_size: int | None = None,
        tokenizer_sha256: str | None = None,
        hidden_layers: Sequence[int] | None = None,
        hidden_dim: int | None = None,
        samples: int | None = None,
    ) -> None:
        """Checks the store against a consumer's config (None = don't care).

        Raises:
            SchemaMismatchError: naming the first field that disagrees and the fix.
        """
        s = self.schema
        checks = [
            (
                "seq_len",
                seq_len,
                s.seq_len,
                "set the trainer's seq_len to the store's or dump a new store",
            ),
            ("k", k, s.k, "set the trainer's top-k to the store's k or dump a new store"),
            (
                "vocab_size",
                vocab_size,
                s.vocab_size,
                "use the tokenizer the store was dumped with (same vocab size)",
            ),
            (
                "tokenizer_sha256",
                tokenizer_sha256,
                s.tokenizer.get("sha256"),
                "use the SentencePiece model the store was dumped with",
            ),
            (
                "hidden_dim",
                hidden_dim,
                s.hidden_dim,
                "set the regressor's teacher width to the store's hidden_dim",
            ),
            (
                "samples",
                samples,
                s.samples,
                "set the trainer's sampled-KD draws to the store's samples or dump a store with them",
            ),
        ]
        for name, wanted, have, fix in checks:
            if wanted is not None and wanted != have:
                raise errors.SchemaMismatchError(
                    f"store {self.url} has {name}={have!r} but {wanted!r} was required; {fix}"
                )
        if hidden_layers is not None:
            missing = sorted(set(int(l) for l in hidden_layers) - set(s.hidden_layers))
            if missing:
                raise errors.SchemaMismatchError(
                    f"store {self.url} has hidden_layers={list(s.hidden_layers)} but layers {missing} "
                    "were required; distil from a stored layer or dump those layers"
                )


def _failed_unit(message: str, start: int, stop: int, rows_per_unit: int) -> str:
    """ "unit N": from the shard key in TensorStore's message, else the unit(s) of rows [start, stop)."""
    found = _SHARD_IN_MESSAGE.search(message)
    if found:
        return f"unit {found.group(1)}"
    first, last = start // rows_per_unit, (stop - 1) // rows_per_unit
    return f"unit {first}" if first == last else f"units {first}..{last}"


def _float_dtype(arg: str, dtype: npt.DTypeLike) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not np.issubdtype(dt, np.floating):
        raise errors.StoreInputError(
            f"{arg}={dtype!r} is not a floating dtype; use np.float32 or np.float16"
        )
    return dt


def _contiguous_runs(rows: np.ndarray) -> list:
    """[(start, stop)] covering ``rows`` in order, merging consecutive indices."""
    if rows.size == 0:
        return [(0, 0)]  # An empty read still yields correctly shaped arrays.
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops)]
