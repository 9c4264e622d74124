"""Grain input pipeline over a store: aligned batches of exactly what a method needs.

    source = StoreSource(url, store_fields(("tokens", "topk_ids", "topk_logprobs")))
    it = make_iterator(source, global_batch=256, seed=0)
    batch = next(it)           # {"tokens": int32[b,T], "topk_ids": ..., ...}
    state = it.get_state()     # JSON-able; it.set_state(state) resumes exactly

Index pipeline: committed row ids → seeded global shuffle (reshuffled each
epoch) → infinite repeat → per-host slice (process i of n takes every n-th
element) → batch of indices → ONE `StoreReader.read_stored` per batch (a map
run by Grain's reader threads, which is the prefetch). Reading a batch in one
call lets TensorStore fetch all its chunks concurrently instead of row by row.

The batch holds the arrays AS STORED (integer codes and their side arrays,
`trainer.training.decode` names them): the host does no decode pass at all,
the train step dequantises on the device (`decode.decode_batch`).
"""
from __future__ import annotations

import grain
from absl import flags
import jax
import numpy as np

from store import StoreInputError, StoreReader, StoreSchema, profiles
from trainer.model.errors import ConfigError
from trainer.training import decode

# The batch keys a method's loss uses (the store's "hidden/<l>" becomes "hidden").
_TOPK = ("topk_ids", "topk_logprobs")
_SAMPLED = ("sampled_ids", "sampled_counts", "sampled_logprobs")


DataConfigError = ConfigError  # The store cannot feed the requested batches


def store_fields(batch_keys, hidden_layer: int = 0) -> tuple[str, ...]:
    """Store fields to read for the batch keys a phase uses (`methods.Phase.fields`).

    NLL reads tokens; KD adds the top-k or the sampled logits (loss.signal);
    HLD adds one hidden layer. Per phase,
    not per method: HLDF phase 1 reads no top-k and phase 2 no hidden state.
    """
    fields = []
    for key in batch_keys:
        if key in _TOPK:
            field = "topk"
        elif key in _SAMPLED:
            field = "sampled"
        elif key == "hidden":
            field = f"hidden/{hidden_layer}"
        elif key == "tokens":
            field = "tokens"
        else:
            raise ValueError(f"unknown batch key {key!r}; use tokens, topk_ids, "
                             f"topk_logprobs, sampled_ids, sampled_counts, "
                             f"sampled_logprobs or hidden")
        if field not in fields:
            fields.append(field)
    return tuple(fields)


class StoreSource:
    """The committed rows of a store, read one batch of indices at a time.

    Not a per-row Grain data source: the pipeline (`make_dataset`) batches
    indices first and maps each batch to ONE `read_indices` call, so there is
    no `__getitem__` (a row-by-row read would be the slow path).

    Picklable: only the URL and options travel; the StoreReader (and its
    TensorStore handles) is opened lazily in whichever process reads.

    Args:
        url: store path or URL.
        fields: store fields as in `StoreReader.read` ("tokens", "topk", "hidden/<l>").
        allow_partial: read only committed units of an unfinished store.
    """

    def __init__(self, url: str, fields: tuple[str, ...], allow_partial: bool = False):
        self.url = str(url)
        self.fields = tuple(fields)
        self.allow_partial = allow_partial
        value_keys(self.fields)  # An unknown field fails here, not in a reader thread.
        self._reader = None
        self._rows = None
        self._names = None

    def __getstate__(self):
        # The row list travels with the source: on a store that is still being
        # dumped (allow_partial), a worker re-listing committed rows could map
        # index → row differently from the process that shuffled the indices.
        return {"url": self.url, "fields": self.fields, "allow_partial": self.allow_partial,
                "rows": self._rows}

    def __setstate__(self, state):
        rows = state.pop("rows", None)
        self.__init__(**state)
        self._rows = rows

    @property
    def reader(self) -> StoreReader:
        """The lazily opened StoreReader of this process."""
        if self._reader is None:
            self._reader = StoreReader(self.url, allow_partial=self.allow_partial)
        return self._reader

    @property
    def rows(self) -> np.ndarray:
        """Committed row ids (int64), fixed at first use so indices stay stable."""
        if self._rows is None:
            self._rows = np.asarray(self.reader.committed_rows(), dtype=np.int64)
        return self._rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def encoding(self) -> decode.Encoding:
        """The store's encoding (what `decode.decode_batch` needs to decode these batches)."""
        return decode.Encoding.from_reader(self.reader)

    def stored_names(self) -> list[str]:
        """The stored arrays a batch reads (`StoreReader.stored_names`, activations
        RMS-normalised: no per-token RMS), checked against what `decode` decodes.

        Raises:
            DataConfigError: the store lacks a field, or stores arrays the decoder does not expect.
        """
        keys, layer = value_keys(self.fields)
        want = self.encoding.stored_names(keys, layer)
        try:
            have = self.reader.stored_names(self.fields, hidden_normalized=True)
        except StoreInputError as e:
            raise DataConfigError(f"store {self.url}: {e}; read only fields the store holds "
                                  f"(python -m store inspect {self.url})") from None
        if sorted(have) != sorted(want):
            raise DataConfigError(
                f"store {self.url} ({self.reader.schema.profile} profile) stores {have} for fields "
                f"{list(self.fields)} but trainer.training.decode decodes {want}; update decode._LAYOUT "
                f"to the store's profile")
        return have

    def read_indices(self, indices) -> dict[str, np.ndarray]:
        """Reads source indices (positions in `rows`) as one batch of stored arrays."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        if self._names is None:
            self._names = self.stored_names()
        raw = self.reader.read_stored(rows, self._names)
        return {decode.batch_key(name): arr for name, arr in raw.items()}


def value_keys(fields) -> tuple[tuple[str, ...], int]:
    """(batch value keys, hidden layer) of store fields: the inverse of `store_fields`."""
    keys, layer = [], 0
    for field in fields:
        if field == "tokens":
            keys.append("tokens")
        elif field == "topk":
            keys += _TOPK
        elif field == "sampled":
            keys += _SAMPLED
        elif field.startswith("hidden/") and field[len("hidden/"):].isdigit():
            keys.append("hidden")
            layer = int(field[len("hidden/"):])
        else:
            raise ValueError(f"unknown store field {field!r}; use tokens, topk, sampled or hidden/<l>")
    return tuple(keys), layer


class _ReadBatch(grain.transforms.Map):
    """Index batch → data batch (a class, not a lambda, so it pickles to workers)."""

    def __init__(self, source: StoreSource):
        self.source = source

    def map(self, indices):
        # Sorted rows turn into fewer contiguous store reads; the order of rows
        # inside a batch does not matter to the loss.
        return self.source.read_indices(np.sort(indices))


def make_dataset(source: StoreSource, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """Infinite, seeded MapDataset of this host's batches.

    Args:
        source: the store source.
        batch_size: rows per batch on THIS host (global batch / process_count).
        seed: shuffle seed (each epoch is reshuffled deterministically).
        process_index, process_count: this host's slot among all hosts.

    Raises:
        DataConfigError: fewer committed rows than one global batch.
    """
    n = len(source)
    if n < batch_size * process_count:
        raise DataConfigError(f"store has {n} committed rows but a global batch needs "
                              f"{batch_size * process_count}; lower data.batch_size or "
                              f"write more rows")
    ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    return ds.map(_ReadBatch(source))


def make_iterator(source: StoreSource, global_batch: int, seed: int, num_threads: int = 2,
                  prefetch_buffer_size: int = 4, num_workers: int = 0):
    """A checkpointable iterator of host-local batches (Grain DatasetIterator).

    Args:
        source: the store source.
        global_batch: rows per step over all hosts (split evenly between hosts).
        seed: shuffle seed.
        num_threads: reader threads per process (0: read in the caller's thread).
        prefetch_buffer_size: batches read ahead per process.
        num_workers: >0 reads in that many worker processes (Grain mp_prefetch).

    Returns:
        An iterator with `get_state()` / `set_state(state)` (JSON-able dicts).
    """
    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
        raise DataConfigError(f"data.batch_size={global_batch} is not divisible by the "
                              f"{count} hosts; use a multiple of {count}")
    ds = make_dataset(source, global_batch // count, seed, index, count)
    options = grain.ReadOptions(num_threads=num_threads,
                                prefetch_buffer_size=prefetch_buffer_size)
    iter_ds = ds.to_iter_dataset(options)
    if num_workers > 0:
        # Grain's worker processes read absl flags; outside an absl app nothing
        # parses them, so take their defaults rather than crash.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, k: int = 0,
                    hidden_dim: int = 0, seed: int = 0, as_loaded: bool = True,
                    profile: str = "exact") -> dict[str, np.ndarray]:
    """A random in-memory batch (bench/tests).

    Args:
        as_loaded: True: the keys and arrays the store loader yields for a store
            of `profile`: the profile's numpy encoding (`store.profiles`), named
            as in `trainer.training.decode`, activations RMS-normalised (no
            per-token RMS); decode it with `synthetic_encoding`. False: float32
            values, as `write_unit` takes.
        profile: store profile whose stored arrays to produce.
    """
    rng = np.random.default_rng(seed)
    batch = {"tokens": rng.integers(0, vocab_size, (batch_size, seq_len), dtype=np.int32)}
    if k:
        logits = rng.normal(size=(batch_size, seq_len, vocab_size)).astype(np.float32)
        ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
        lse = np.log(np.exp(logits).sum(-1, keepdims=True))
        batch["topk_ids"] = ids
        batch["topk_logprobs"] = np.take_along_axis(logits, ids, -1) - lse
    if hidden_dim:
        batch["hidden"] = rng.normal(size=(batch_size, seq_len, hidden_dim)).astype(np.float32)
    if not as_loaded:
        return batch
    prof = profiles.get_profile(profile)
    stored = {"tokens": batch["tokens"]}
    if k:
        stored.update(prof.encode_topk(batch["topk_ids"], batch["topk_logprobs"], vocab_size))
    if hidden_dim:
        stored.update(prof.encode_hidden(1, batch["hidden"]))  # any layer: keys drop it
    keys, _ = value_keys(("tokens",) + (("topk",) if k else ()) + (("hidden/1",) if hidden_dim else ()))
    enc = synthetic_encoding(profile, vocab_size, k, hidden_dim)
    return {decode.batch_key(n): stored[n] for n in enc.stored_names(keys, 1)}


def synthetic_encoding(profile: str, vocab_size: int, k: int = 0, hidden_dim: int = 0) -> decode.Encoding:
    """The Encoding of `synthetic_batch(..., as_loaded=True, profile=profile)` batches."""
    schema = StoreSchema(seq_len=2, k=k, vocab_size=vocab_size, hidden_layers=(1,) if hidden_dim else (),
                         hidden_dim=hidden_dim, profile=profile)
    return decode.Encoding.from_schema(schema, profiles.get_profile(profile).encodings(schema))
