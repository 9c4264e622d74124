"""Decoding stored store arrays inside the jitted train step (jnp).

The loader (trainer.training.data) ships the arrays AS STORED, keyed by their
stored names (the manifest's: "topk/top_logprob", "hidden_aux/<l>/qstep"):
integer codes and their side arrays, read from disk with no host decode pass.
The step turns them into typed values here, where the work is cheap and
parallel:

    spec = BatchSpec(encoding=Encoding.from_reader(reader), fields=phase.fields)  # once per phase
    batch = decode_batch(stored, spec)   # top of phase_loss.loss_fn, inside jit -> signals.Batch

Which stored arrays a field needs, and their ranks, come from the store's
profile (``store.profiles.Profile.field_arrays``, the one table the writer,
the reader and this decoder share); activations are read RMS-normalised
(x / rms(x), the per-token RMS is never read): the hidden-state losses
normalise the target per token anyway. This module only dispatches: each
codec's jnp decoder sits beside its numpy decoder in the store package
(``decode_jnp`` of store/topk_codecs.py, store/hidden_codecs.py, store/lean.py,
store/sampled.py, ids in store/bitpack.py), handed ``jax.numpy`` (the store
never imports JAX), so a profile or a codec needs nothing here.

    field       exact                  compact                              lean
    tokens      int32 [B,T]            (same)                               (same)
    topk        topk/ids u16/i32       packed u8 [B,T,ceil(K*bits/8)]       as compact
                topk/logprobs f16      u8 code [B,T,K] + topk/top_logprob
    hidden/<l>  f16 y [B,T,D]          i8 q + qstep f16 [B,T]               u8 [B,T,ceil(D/3)]
                                       + outlier_idx/val [B,T,n]            + step f16 [B,T,G]
    sampled     ids u16/i32            packed u8 [B,T,ceil(S*bits/8)]       packed
                counts u8, logprobs f16 [B,T,S] (all profiles)

(A compact store written before packed ids, no ``ids_bits`` in its
manifest, stores ids as u16/i32 like exact.) Decoded: ids and counts int32,
log-probs and activations float32. Equivalence with the numpy decoders of
`store.profiles` (tests/trainer/test_trainer_decode.py): bitwise for every
array — casts, int8 * float16 step and outlier restore, the log-prob code,
packed ids, and lean's inverse Hadamard (its partial sums are all exact in
float32, see `store.lean.decode_jnp`).
"""

from __future__ import annotations

import dataclasses
import types
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from store import profiles, sampled
from trainer.training.signals import Batch, SampledSignal, TopkSignal

if TYPE_CHECKING:  # only for annotations: decoding needs no open store
    from store.reader import StoreReader
    from store.schema import StoreSchema


@dataclasses.dataclass(frozen=True, kw_only=True)
class Encoding:
    """How a store's arrays are encoded: a static (hashable) description for jit.

    Attributes:
        profile: the store's profile name (store.profiles.PROFILES).
        vocab_size: V (ids are < V).
        k: stored top-k slots K (0: none).
        samples: sampled slots S (0: none).
        hidden_dim: D of the stored activations (0: none).
        ids_bits: bits per packed id (0: ids stored as u16/i32, unpacked).
        hidden_signs: lean only: the D rotation signs (+1/-1) from the manifest.
        loss_mask: the store has a loss_mask (without one, the field decodes to all ones).
    """

    profile: str = "exact"
    vocab_size: int = 0
    k: int = 0
    samples: int = 0
    hidden_dim: int = 0
    ids_bits: int = 0
    hidden_signs: tuple[int, ...] = ()
    loss_mask: bool = False

    def __post_init__(self) -> None:
        if self.profile not in profiles.PROFILES:
            raise ValueError(
                f"store profile {self.profile!r} is unknown; "
                f"store.profiles knows {sorted(profiles.PROFILES)}"
            )
        prof = self.store_profile
        for family, codec in (("top-k", prof.topk), ("hidden", prof.hidden)):
            if not callable(getattr(codec, "decode_jnp", None)):
                raise ValueError(
                    f"store profile {self.profile!r}: its {codec.name} {family} codec has no "
                    "device decoder (decode_jnp beside its numpy decode); add it"
                )
        if (
            prof.hidden.name == "lean"
            and self.hidden_dim
            and len(self.hidden_signs) != self.hidden_dim
        ):
            raise ValueError(
                f"lean store: {len(self.hidden_signs)} hidden_signs in the manifest "
                f"for hidden_dim={self.hidden_dim}; the store's manifest is damaged"
            )
        if not 0 <= self.ids_bits <= 32:
            raise ValueError(f"ids_bits={self.ids_bits} is outside 0..32; the manifest is damaged")

    @property
    def store_profile(self) -> profiles.Profile:
        """The store's profile (its codecs and names)."""
        return profiles.PROFILES[self.profile]

    @classmethod
    def from_reader(cls, reader: StoreReader) -> Encoding:
        """The encoding of an open `store.StoreReader`'s store (schema + manifest)."""
        return cls.from_schema(reader.schema, reader.manifest["encodings"])

    @classmethod
    def from_schema(cls, s: StoreSchema, enc: dict) -> Encoding:
        """From a StoreSchema and the manifest's "encodings" entry (`Profile.describe`)."""
        # A store written before packed ids has no "ids_bits": ids stored as u16/i32.
        ids_bits = int(enc["ids_bits"]) if "ids_bits" in enc else 0
        # Lean rotation signs (listed only when the store has activations).
        signs = (
            tuple(int(x) for x in enc["hidden_signs"])
            if "hidden_signs" in enc and s.hidden_dim
            else ()
        )
        return cls(
            profile=s.profile,
            vocab_size=int(s.vocab_size),
            k=int(s.k),
            samples=int(s.samples),
            hidden_dim=int(s.hidden_dim),
            ids_bits=ids_bits,
            hidden_signs=signs,
            loss_mask=bool(s.loss_mask),
        )

    def field_arrays(self, field: str) -> tuple[tuple[str, int], ...]:
        """(stored name, batch ndim) of the arrays a normalized read of a store field needs.

        From the profile's array specs (``Profile.field_arrays``): names and
        ranks do not depend on the sizes, so the one table serves any T.
        """
        layer = profiles.hidden_layer(field)
        # A StoreSchema stand-in holding only the sizes field_arrays reads (Any: duck-typed).
        shape: Any = types.SimpleNamespace(
            seq_len=1,
            vocab_size=max(self.vocab_size, 2),
            k=max(self.k, 1),
            samples=max(self.samples, 1),
            hidden_layers=() if layer is None else (layer,),
            hidden_dim=self.hidden_dim,
            loss_mask=self.loss_mask,  # absent: no array, decode_batch gives all ones
            token_logprob=True,
        )
        table = self.store_profile.field_arrays(shape, normalized=True)
        if field == profiles.LOSS_MASK and not self.loss_mask:
            return ()
        if field not in table:
            raise ValueError(
                f"unknown store field {field!r}; use tokens, topk, sampled or hidden/<l>"
            )
        return tuple((spec.name, 1 + len(spec.inner_shape)) for spec in table[field])


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """What one phase's batches hold and how they decode (static, hashable: a jit static).

    Built once per phase from the store's manifest (``Encoding.from_reader``)
    and the phase's store fields (``methods.Phase.fields``); the loader reads
    ``names``, the step's shardings use ``ndims``, ``decode_batch`` decodes.

    Attributes:
        encoding: the store's Encoding.
        fields: store fields: "tokens", "topk" or "sampled", "hidden/<l>".
    """

    encoding: Encoding
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        for field in self.fields:
            self.encoding.field_arrays(field)  # an unknown field fails here, not in the step

    @property
    def ndims(self) -> dict[str, int]:
        """{stored name: ndim} of the batch's arrays, batch dim first."""
        return {
            name: ndim for field in self.fields for name, ndim in self.encoding.field_arrays(field)
        }

    @property
    def names(self) -> list[str]:
        """The stored arrays a batch holds, in field order."""
        return list(self.ndims)


def decode_batch(batch: dict, spec: BatchSpec) -> Batch:
    """Stored arrays ({stored name: array}) -> the typed values (jnp; call inside jit).

    Returns:
        A signals.Batch with int32 tokens, ids and counts, float32 log-probs and
        x/rms(x), for the spec's fields (None for the others).
    """
    e = spec.encoding
    prof = e.store_profile
    out: dict[str, Any] = {"tokens": batch[profiles.TOKENS].astype(jnp.int32)}
    hidden = {}
    # The rollout fields (store/rollout.py): one layout in every profile; no stored mask: all ones.
    if profiles.LOSS_MASK in spec.fields:
        mask = batch[profiles.LOSS_MASK] if e.loss_mask else jnp.ones_like(out["tokens"])
        out["loss_mask"] = mask.astype(jnp.float32)
    if profiles.TOKEN_LOGPROB in spec.fields:
        out["token_logprob"] = batch[profiles.TOKEN_LOGPROB].astype(jnp.float32)
    for field in spec.fields:
        layer = profiles.hidden_layer(field)
        if field == profiles.TOPK:
            ids, logprobs = prof.topk.decode_jnp(jnp, batch, e.k, e.ids_bits)
            out["topk"] = TopkSignal(ids=ids, logprobs=logprobs)
        elif field == profiles.SAMPLED:
            ids, counts, logprobs = sampled.decode_jnp(jnp, batch, e.samples, e.ids_bits)
            out["sampled"] = SampledSignal(ids=ids, counts=counts, logprobs=logprobs)
        elif layer is not None:
            hidden[layer] = prof.hidden.decode_jnp(jnp, batch, layer, e.hidden_signs)
    if hidden:
        out["hidden_by_layer"] = hidden
        if len(hidden) == 1:
            (out["hidden"],) = hidden.values()
    return Batch(**out)


EXACT = Encoding()  # Batches already holding values (synthetic, tests): decode = casts.
