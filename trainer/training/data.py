"""Grain input pipeline over a store: aligned batches of exactly what a method needs.

    source = StoreSource(url, phase.fields)   # store fields: ("tokens", "topk", "hidden/12")
    it = make_iterator(source, global_batch=256, seed=0)
    batch = next(it)           # {"tokens": int32[b,T], "topk/ids": ..., "topk/logprobs": ..., ...}
    state = it.get_state()     # JSON-able; it.set_state(state) resumes exactly

Index pipeline: committed row ids → seeded global shuffle (reshuffled each
epoch) → infinite repeat → per-host slice (process i of n takes every n-th
element) → batch of indices → ONE `StoreReader.read_stored` per batch (a map
run by Grain's reader threads, which is the prefetch). Reading a batch in one
call lets TensorStore fetch all its chunks concurrently instead of row by row.

The batch holds the arrays AS STORED, under their stored names (integer codes
and their side arrays, the store profile's `Profile.field_arrays`): the host
does no decode pass at all, the train step dequantises on the device
(`decode.decode_batch`, with the phase's `decode.BatchSpec`).
"""

from __future__ import annotations

import grain
import jax
import numpy as np
from absl import flags

from store import StoreInputError, StoreReader, StoreSchema, profiles
from trainer.model.errors import ConfigError
from trainer.training import decode


def check_fields(fields) -> None:
    """Refuses a store field the loader cannot read (ValueError naming the fields it can)."""
    for field in fields:
        if (
            field not in (profiles.TOKENS, profiles.TOPK, profiles.SAMPLED)
            and field not in (profiles.LOSS_MASK, profiles.TOKEN_LOGPROB)
            and profiles.hidden_layer(field) is None
        ):
            raise ValueError(
                f"unknown store field {field!r}; use tokens, loss_mask, token_logprob, topk, "
                "sampled or hidden/<l>"
            )


class StoreSource:
    """The committed rows of a store, read one batch of indices at a time.

    Not a per-row Grain data source: the pipeline (`make_dataset`) batches
    indices first and maps each batch to ONE `read_indices` call, so there is
    no `__getitem__` (a row-by-row read would be the slow path).

    Picklable: only the URL and options travel; the StoreReader (and its
    TensorStore handles) is opened lazily in whichever process reads.

    Args:
        url: store path or URL.
        fields: store fields as in `StoreReader.read` ("tokens", "topk", "hidden/<l>"):
            a phase's `methods.Phase.fields`.
        allow_partial: read only committed units of an unfinished store.
    """

    def __init__(self, url: str, fields: tuple[str, ...], allow_partial: bool = False):
        self.url = str(url)
        self.fields = tuple(fields)
        self.allow_partial = allow_partial
        check_fields(self.fields)  # An unknown field fails here, not in a reader thread.
        self._reader = None
        self._rows = None
        self._names = None

    def __getstate__(self):
        # The row list travels with the source: on a store that is still being
        # dumped (allow_partial), a worker re-listing committed rows could map
        # index → row differently from the process that shuffled the indices.
        return {
            "url": self.url,
            "fields": self.fields,
            "allow_partial": self.allow_partial,
            "rows": self._rows,
        }

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

    @property
    def spec(self) -> decode.BatchSpec:
        """What the batches hold and how the step decodes them (from the store's manifest)."""
        return decode.BatchSpec(encoding=self.encoding, fields=self.fields)

    def stored_names(self) -> list[str]:
        """The stored arrays a batch reads (`StoreReader.stored_names`: the store profile's
        `Profile.field_arrays`, activations RMS-normalised: no per-token RMS).

        Raises:
            ConfigError: the store lacks a field.
        """
        try:
            return self.reader.stored_names(self.fields, hidden_normalized=True)
        except StoreInputError as e:
            raise ConfigError(
                f"store {self.url}: {e}; read only fields the store holds "
                f"(python -m store inspect {self.url})"
            ) from None

    def read_indices(self, indices) -> dict[str, np.ndarray]:
        """Reads source indices (positions in `rows`) as one batch: {stored name: array}."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        if self._names is None:
            self._names = self.stored_names()
        return self.reader.read_stored(rows, self._names)


class _ReadBatch(grain.transforms.Map):
    """Index batch → data batch (a class, not a lambda, so it pickles to workers)."""

    def __init__(self, source: StoreSource):
        self.source = source

    def map(self, indices):
        # Sorted rows turn into fewer contiguous store reads; the order of rows
        # inside a batch does not matter to the loss.
        return self.source.read_indices(np.sort(indices))


def make_dataset(
    source: StoreSource, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """Infinite, seeded MapDataset of this host's batches.

    Args:
        source: the store source.
        batch_size: rows per batch on THIS host (global batch / process_count).
        seed: shuffle seed (each epoch is reshuffled deterministically).
        process_index, process_count: this host's slot among all hosts.

    Raises:
        ConfigError: fewer committed rows than one global batch.
    """
    n = len(source)
    if n < batch_size * process_count:
        raise ConfigError(
            f"store has {n} committed rows but a global batch needs "
            f"{batch_size * process_count}; lower data.batch_size or "
            f"write more rows"
        )
    ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    return ds.map(_ReadBatch(source))


def make_iterator(
    source: StoreSource,
    global_batch: int,
    seed: int,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
    num_workers: int = 0,
):
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
        raise ConfigError(
            f"data.batch_size={global_batch} is not divisible by the "
            f"{count} hosts; use a multiple of {count}"
        )
    ds = make_dataset(source, global_batch // count, seed, index, count)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    iter_ds = ds.to_iter_dataset(options)
    if num_workers > 0:
        # Grain's worker processes read absl flags; outside an absl app nothing
        # parses them, so take their defaults rather than crash.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)


def synthetic_batch(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    k: int = 0,
    hidden_dim: int = 0,
    seed: int = 0,
    as_loaded: bool = True,
    profile: str = "exact",
    hidden_layer: int = 1,
) -> dict[str, np.ndarray]:
    """A random in-memory batch (bench/tests).

    Args:
        as_loaded: True: what the store loader yields for a store of `profile`
            ({stored name: array}, the profile's numpy encoding, activations
            RMS-normalised: no per-token RMS); decode it with
            `synthetic_encoding`. False: float32 values, as `write_unit` takes
            them ({"tokens", "topk_ids", "topk_logprobs", "hidden"}).
        profile: store profile whose stored arrays to produce.
        hidden_layer: the layer the activations are stored under (as_loaded).
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
    stored = {profiles.TOKENS: batch["tokens"]}
    fields = (profiles.TOKENS,)
    if k:
        stored.update(prof.encode_topk(batch["topk_ids"], batch["topk_logprobs"], vocab_size))
        fields += (profiles.TOPK,)
    if hidden_dim:
        stored.update(prof.encode_hidden(hidden_layer, batch["hidden"]))
        fields += (profiles.hidden_name(hidden_layer),)
    spec = decode.BatchSpec(
        encoding=synthetic_encoding(profile, vocab_size, k, hidden_dim), fields=fields
    )
    return {name: stored[name] for name in spec.names}


def synthetic_encoding(
    profile: str, vocab_size: int, k: int = 0, hidden_dim: int = 0
) -> decode.Encoding:
    """The Encoding of `synthetic_batch(..., as_loaded=True, profile=profile)` batches."""
    schema = StoreSchema(
        seq_len=2,
        k=k,
        vocab_size=vocab_size,
        hidden_layers=(1,) if hidden_dim else (),
        hidden_dim=hidden_dim,
        profile=profile,
    )
    return decode.Encoding.from_schema(schema, profiles.get_profile(profile).encodings(schema))
