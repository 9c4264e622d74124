"""Creating stores and writing work units.

A work unit ``u`` is rows ``[u*R, min((u+1)*R, N))`` of every array (R =
``rows_per_unit``), i.e. exactly one shard file per array. ``write_unit``:

1. validates and encodes the inputs (deterministically, see profiles.py);
2. deletes the unit's commit record (a crash from here on leaves the unit
   uncommitted rather than committed with stale checksums);
3. writes every array slice with concurrent TensorStore futures and waits
   for all of them (each shard is written atomically);
4. writes the commit record last.

``write_unit_encoded`` takes arrays already encoded (e.g. on the device),
checks them against the profile's array specs and takes steps 2-4.

Several processes may write distinct units of one store at once; a unit
written twice (resume after a crash) gets identical bytes. Create the store
once (one ``create_store`` call, e.g. in the pipeline's driver) before
workers call ``open_writer``: two simultaneous first creations with
different schemas race on the root zarr.json (one of them then fails with
SchemaMismatchError or CorruptStoreError; do not rely on that).
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorstore as ts

from store import errors, layout, ledger, metadata, profiles, remote, rollout, sampled, snapshot
from store.schema import StoreSchema, build_manifest, check_same_schema


def create_store(
    url: str, schema: StoreSchema, num_rows: int, split: str | None = None
) -> "StoreWriter":
    """Creates a store, or reopens an identical one.

    The group's zarr.json (with the manifest) is written first, then the
    arrays are created-or-opened, so a creation interrupted half-way is
    completed by simply calling ``create_store`` again.

    Args:
        url: local path or file:// memory:// gs:// s3:// URL.
        schema: the store's schema.
        num_rows: rows N (grow later with ``StoreWriter.resize``).
        split: "train" or "heldout", recorded in a new store's manifest (what
            its rows are for); None records nothing. Not checked on reopen.

    Returns:
        A StoreWriter.

    Raises:
        SchemaMismatchError: a store exists at ``url`` with another schema or row count.
        StoreNotFoundError: ``url`` is a non-empty directory that is not a store.
    """
    if not isinstance(schema, StoreSchema):
        raise errors.StoreInputError(
            f"schema must be a store.StoreSchema, got {type(schema).__name__}; build one with StoreSchema(...)"
        )
    if int(num_rows) < 0:
        raise errors.StoreInputError(f"num_rows={num_rows} must be >= 0")
    url = layout.normalize_url(url)
    path = layout.local_path(url)
    kv = layout.open_kvstore(url)
    if not _has_manifest(kv, url):
        if path is not None and _non_empty_dir(path):
            raise errors.StoreNotFoundError(
                f"{path} is a non-empty directory without zarr.json, not a store; pass a new or empty path"
            )
        profile = profiles.get_profile(schema.profile)
        # num_rows is outside "schema": the fingerprint (and every commit record) is unchanged by it.
        manifest = dict(
            build_manifest(schema, profile.encodings(schema), split), num_rows=int(num_rows)
        )
        layout.write_group(kv, "", manifest)
        # Intermediate groups so that zarr-python can walk the hierarchy.
        for group in _groups(schema):
            layout.write_group(kv, group, {})
        layout.write_group(kv, "ledger", metadata.LEDGER_ATTRIBUTES)
        _write(kv, url, metadata.COPY_KEY, metadata.copy_bytes(manifest))
    opened = metadata.open_manifest(kv, url)
    problems = opened.problems
    if [p["file"] for p in problems] == [metadata.COPY_KEY] and opened.copy_raw is None:
        # A creation interrupted before its last step: complete it.
        _write(kv, url, metadata.COPY_KEY, metadata.copy_bytes(opened.manifest))
        problems = []
    if problems:
        metadata.refuse(url, problems)
    check_same_schema(opened.schema, schema, url)
    if opened.legacy:
        tokens_meta = layout.read_json(kv, "tokens/zarr.json")
        stored_rows = None if tokens_meta is None else metadata.num_rows(kv, opened, url)
    else:
        stored_rows = opened.manifest["num_rows"]
    if stored_rows is not None and stored_rows != int(num_rows):
        raise errors.SchemaMismatchError(
            f"store {url} has num_rows={stored_rows}, not {num_rows}; reopen it with "
            "store.open_writer(url) and call .resize(num_rows) to grow it"
        )
    return StoreWriter(url, _create_rows=int(num_rows))


def open_writer(url: str) -> "StoreWriter":
    """Opens an existing store for writing units (StoreNotFoundError if none)."""
    return StoreWriter(url)


def compact_store(url: str) -> dict:
    """Writes the ledger snapshot of the store at ``url`` (``python -m store compact``); see StoreWriter.compact."""
    return open_writer(url).compact()


def _has_manifest(kv: ts.KvStore, url: str) -> bool:
    """Whether the root zarr.json or the manifest copy exists (then this is an existing store)."""
    try:
        found = [kv.read(k).result().state != "missing" for k in ("zarr.json", metadata.COPY_KEY)]
    except ValueError as e:
        raise remote.storage_error(e, url, "opening") from None
    return any(found)


def _write(kv: ts.KvStore, url: str, key: str, value: bytes) -> None:
    try:
        kv.write(key, value).result()
    except ValueError as e:
        raise remote.storage_error(e, url, f"writing {key} of") from None


def _non_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and any(True for _ in os.scandir(path))


def _groups(schema: StoreSchema) -> list[str]:
    groups = []
    if schema.k:
        groups.append("topk")
    if schema.samples:
        groups.append("sampled")
    if schema.hidden_layers:
        groups += ["hidden", "hidden_aux"] + [f"hidden_aux/{l}" for l in schema.hidden_layers]
    return groups


class StoreWriter:
    """Writes work units of one store. Use ``create_store`` / ``open_writer``."""

    def __init__(self, url: str, _create_rows: int | None = None) -> None:
        self.url = layout.normalize_url(url)
        # A writer refuses metadata that disagrees with the manifest (store/metadata.py), except
        # arrays not created yet when it is creating them.
        self._kv, opened, rows = metadata.open_checked(self.url, nodes="none")
        self.manifest, self.schema, self._legacy = opened.manifest, opened.schema, opened.legacy
        self._profile = profiles.for_store(self.schema, self.manifest)
        self._specs = {s.name: s for s in self._profile.arrays(self.schema)}
        expected = metadata.expected_nodes(self.schema, self.manifest, rows)
        problems, _ = metadata.check_nodes(
            self._kv, expected, self.url, [n + "/zarr.json" for n in self._specs]
        )
        if _create_rows is not None:
            problems = [p for p in problems if not p["problem"].startswith("is missing")]
        if problems:
            metadata.refuse(self.url, problems)
        self._rows = rows
        self._open_arrays(_create_rows)
        if self._legacy:
            self._rows = int(self._arrays["tokens"].shape[0])

    def _open_arrays(self, create_rows: int | None) -> None:
        R = self.schema.rows_per_unit
        self._arrays = {
            name: layout.open_array(self.url, spec, create_rows=create_rows, rows_per_unit=R)
            for name, spec in self._specs.items()
        }

    @property
    def array_specs(self) -> dict:
        """{stored array name: layout.ArraySpec} of this store (what ``write_unit_encoded`` takes)."""
        return dict(self._specs)

    @property
    def num_rows(self) -> int:
        """Rows N: the manifest's ``num_rows`` (a store from before it: the tokens array's first dimension)."""
        return self._rows

    @property
    def num_units(self) -> int:
        R = self.schema.rows_per_unit
        return (self.num_rows + R - 1) // R

    def unit_rows(self, unit: int) -> tuple[int, int]:
        """Row range [start, stop) of a unit."""
        if not 0 <= int(unit) < self.num_units:
            raise errors.StoreInputError(
                f"unit {unit} out of range: the store has {self.num_units} units (rows {self.num_rows}); "
                "resize the store first to add rows"
            )
        R = self.schema.rows_per_unit
        return int(unit) * R, min((int(unit) + 1) * R, self.num_rows)

    def resize(self, num_rows: int) -> None:
        """Grows the store to ``num_rows`` rows (shrinking is refused).

        If the old last unit was short and committed, its record is deleted:
        it now spans more rows and must be written again.
        """
        old = self.num_rows
        if num_rows < old:
            raise errors.StoreInputError(
                f"resize({num_rows}) would drop rows of a {old}-row store; stores only grow, write a new store"
            )
        if num_rows == old:
            return
        R = self.schema.rows_per_unit
        if old % R and (old // R) in self.committed_units():
            ledger.uncommit(self._kv, old // R)
        if not self._legacy:
            # The manifest first (the copy, which wins over the root when they disagree), then
            # the arrays: an interrupted resize leaves metadata that `repair` derives again.
            self.manifest = dict(self.manifest, num_rows=int(num_rows))
            _write(self._kv, self.url, metadata.COPY_KEY, metadata.copy_bytes(self.manifest))
            layout.write_group(self._kv, "", self.manifest)
        for arr in self._arrays.values():
            arr.resize(
                exclusive_max=[num_rows] + [None] * (arr.rank - 1),
                resize_metadata_only=True,
                expand_only=True,
            ).result()
        self._rows = int(num_rows)
        self._open_arrays(None)

    def committed_units(self) -> set[int]:
        """Committed units (through the ledger snapshot if there is one, see store/snapshot.py)."""
        return snapshot.committed_units(self._kv, self.num_units)[0]

    def compact(self) -> dict:
        """Writes the ledger snapshot (call when units complete; one compaction at a time per store).

        Returns:
            {"units", "runs", "tombstones_cleared"} of the snapshot written.
        """
        try:
            return snapshot.compact(self._kv)
        except ValueError as e:
            raise remote.storage_error(e, self.url, "compacting the ledger of") from None

    def is_committed(self, unit: int) -> bool:
        # A record that does not decode is not a commit (the unit is re-written).
        return isinstance(ledger.read(self._kv, int(unit)), dict)

    def write_unit(
        self,
        unit: int,
        tokens: npt.ArrayLike,
        topk_ids: npt.ArrayLike | None = None,
        topk_logprobs: npt.ArrayLike | None = None,
        hidden: Mapping[int, npt.ArrayLike] | None = None,
        sampled_ids: npt.ArrayLike | None = None,
        sampled_counts: npt.ArrayLike | None = None,
        sampled_logprobs: npt.ArrayLike | None = None,
        loss_mask: npt.ArrayLike | None = None,
        token_logprob: npt.ArrayLike | None = None,
    ) -> None:
        """Encodes and writes one work unit, then commits it.

        Args:
            unit: unit index in [0, num_units).
            tokens: int32[R, T] token ids (R = the unit's row count).
            topk_ids: int[R, T, K] teacher top-k ids (required iff k > 0).
            topk_logprobs: float32[R, T, K] log-probs sorted descending (-inf: dropped slot).
            hidden: {layer: float32[R, T, D]} for every captured layer.
            sampled_ids: int[R, T, S] distinct drawn ids, ascending, empty slots
                last with id 0 (required iff samples = S > 0; store/sampled.py).
            sampled_counts: int[R, T, S] draws per id, summing to S; 0 = empty slot.
            sampled_logprobs: float32[R, T, S] teacher log-prob at tau=1; -inf in empty slots.
            loss_mask: 0/1 integer or bool [R, T], 1 = completion token (required iff the
                schema has loss_mask; store/rollout.py).
            token_logprob: float32[R, T] teacher log-prob of each realized next token, 0 at
                the last position (required iff the schema has token_logprob).

        Raises:
            StoreInputError: a missing, extra, mis-shaped or out-of-range input.
        """
        start, stop = self.unit_rows(unit)
        encoded = self._encode(
            stop - start,
            tokens,
            topk_ids,
            topk_logprobs,
            hidden,
            sampled_ids,
            sampled_counts,
            sampled_logprobs,
        )
        encoded.update(
            rollout.check_inputs(stop - start, self.schema, loss_mask, token_logprob, _check_array)
        )
        self._write_encoded(int(unit), start, stop, encoded)

    def write_unit_encoded(self, unit: int, encoded: dict) -> None:
        """Writes one work unit whose arrays are already encoded (e.g. on the device), then commits it.

        Args:
            unit: unit index in [0, num_units).
            encoded: {stored array name: array} with exactly this store's arrays
                (``array_specs``), each of shape [R, *inner_shape] and the spec's dtype.

        Raises:
            StoreInputError: a missing or extra array, or a wrong shape or dtype.
        """
        start, stop = self.unit_rows(unit)
        names = set(encoded)
        if names != set(self._specs):
            missing, extra = sorted(set(self._specs) - names), sorted(names - set(self._specs))
            raise errors.StoreInputError(
                f"write_unit_encoded got arrays missing {missing} and extra {extra} for this "
                f"{self.schema.profile} store; pass exactly {sorted(self._specs)}"
            )
        checked = {}
        for name, spec in self._specs.items():
            x = np.asarray(encoded[name])
            shape = (stop - start, *spec.inner_shape)
            if x.dtype != np.dtype(spec.dtype) or x.shape != shape:
                raise errors.StoreInputError(
                    f"write_unit_encoded: {name} is {x.dtype}{list(x.shape)}, the store needs "
                    f"{spec.dtype}{list(shape)} (unit {unit} has rows {start}..{stop}); encode with this profile"
                )
            checked[name] = x
        if rollout.LOSS_MASK in checked and rollout.mask_problem(checked[rollout.LOSS_MASK]):
            raise errors.StoreInputError(
                f"write_unit_encoded: {rollout.mask_problem(checked[rollout.LOSS_MASK])}"
            )
        self._write_encoded(int(unit), start, stop, checked)

    def _write_encoded(self, unit: int, start: int, stop: int, encoded: dict) -> None:
        """Un-commits the unit, writes every array, then writes the commit record last."""
        record = ledger.make_record(unit, (start, stop), self.manifest["schema_sha256"], encoded)
        try:
            ledger.uncommit(self._kv, unit)
            futures = [self._arrays[name][start:stop].write(x) for name, x in encoded.items()]
            for f in futures:
                f.result()
            ledger.write(self._kv, record)
        except ValueError as e:  # After TensorStore's retries; the unit stays uncommitted.
            raise remote.storage_error(e, self.url, f"writing unit {unit} of") from None

    def _encode(
        self,
        rows: int,
        tokens: npt.ArrayLike,
        topk_ids: npt.ArrayLike | None,
        topk_logprobs: npt.ArrayLike | None,
        hidden: Mapping[int, npt.ArrayLike] | None,
        sampled_ids: npt.ArrayLike | None,
        sampled_counts: npt.ArrayLike | None,
        sampled_logprobs: npt.ArrayLike | None,
    ) -> dict:
        s = self.schema
        T, K, V = s.seq_len, s.k, s.vocab_size
        tokens_RxT = _check_array("tokens", tokens, (rows, T), "integer")
        if tokens_RxT.size and (tokens_RxT.min() < 0 or tokens_RxT.max() >= V):
            raise errors.StoreInputError(
                f"tokens must be in [0, vocab_size={V}); got range "
                f"[{tokens_RxT.min()}, {tokens_RxT.max()}]; check the tokenizer"
            )
        encoded = {"tokens": tokens_RxT.astype(np.int32)}
        if K:
            if topk_ids is None or topk_logprobs is None:
                raise errors.StoreInputError(
                    f"this store has k={K}: pass topk_ids and topk_logprobs"
                )
            ids_RxTxK = _check_array("topk_ids", topk_ids, (rows, T, K), "integer")
            logprobs_RxTxK = _check_array("topk_logprobs", topk_logprobs, (rows, T, K), "floating")
            _check_topk(ids_RxTxK, logprobs_RxTxK, V)
            encoded.update(
                self._profile.encode_topk(ids_RxTxK, logprobs_RxTxK.astype(np.float32), V)
            )
        elif topk_ids is not None or topk_logprobs is not None:
            raise errors.StoreInputError(
                "this store has k=0 (tokens only): pass topk_ids=None, topk_logprobs=None"
            )
        S = s.samples
        if S:
            checked = sampled.check_inputs(
                rows, T, S, V, sampled_ids, sampled_counts, sampled_logprobs, _check_array
            )
            encoded.update(sampled.encode(self._profile, *checked, V))
        elif sampled_ids is not None or sampled_counts is not None or sampled_logprobs is not None:
            raise errors.StoreInputError(
                "this store has samples=0: pass sampled_ids=None, sampled_counts=None, "
                "sampled_logprobs=None (or create it with StoreSchema(samples=S))"
            )
        hidden = dict(hidden or {})
        wanted = set(s.hidden_layers)
        if set(hidden) != wanted:
            raise errors.StoreInputError(
                f"hidden must have exactly the layers {sorted(wanted)}, got {sorted(hidden)}"
            )
        for layer in s.hidden_layers:
            hidden_RxTxD = np.asarray(
                _check_array(
                    f"hidden[{layer}]", hidden[layer], (rows, T, s.hidden_dim), "floating"
                ),
                dtype=np.float32,
            )
            if not np.isfinite(hidden_RxTxD).all():
                raise errors.StoreInputError(
                    f"hidden[{layer}] has NaN/inf values; fix the teacher forward pass (check its dtype)"
                )
            encoded.update(self._profile.encode_hidden(layer, hidden_RxTxD))
        return encoded


def _check_array(name: str, x: Any, shape: tuple[int, ...], kind: str) -> np.ndarray:
    x = np.asarray(x)
    ok_kind = (
        np.issubdtype(x.dtype, np.integer)
        if kind == "integer"
        else (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16")
    )
    if not ok_kind:
        raise errors.StoreInputError(
            f"{name} has dtype {x.dtype}, expected {kind}; cast it before write_unit"
        )
    if x.shape != tuple(shape):
        raise errors.StoreInputError(
            f"{name} has shape {x.shape}, expected {tuple(shape)} (rows of this unit, seq_len, ...); "
            "check the unit's row range with unit_rows(u)"
        )
    return x


def _check_topk(ids: np.ndarray, lp: np.ndarray, V: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise errors.StoreInputError(
            f"topk_ids must be in [0, vocab_size={V}); got [{ids.min()}, {ids.max()}]"
        )
    lp32 = lp.astype(np.float32)
    if np.isnan(lp32).any() or (lp32 > 1e-3).any():
        raise errors.StoreInputError(
            "topk_logprobs must be log-probabilities (<= 0, no NaN); "
            "store logit - logsumexp, not raw logits"
        )
    if (lp32[..., 1:] > lp32[..., :-1]).any():
        raise errors.StoreInputError(
            "topk_logprobs must be sorted descending along k; use lax.top_k order"
        )
