"""Decoding stored store arrays inside the jitted train step (jnp).

The loader (trainer.training.data) ships the arrays AS STORED, keyed by their
stored names (the manifest's: "topk/top_logprob", "hidden_aux/<l>/qstep"):
integer codes and their side arrays, read from disk with no host decode pass.
The step turns them into typed values here, where the work is cheap and
parallel:

    spec = BatchSpec(encoding=Encoding.from_reader(reader), fields=phase.fields)  # once per phase
    batch = decode_batch(stored, spec)   # top of methods.loss_fn, inside jit -> signals.Batch

Which stored arrays a field needs, and their ranks, come from the store's
profile (``store.profiles.Profile.field_arrays``, the one table the writer,
the reader and this decoder share); activations are read RMS-normalised
(x / rms(x), the per-token RMS is never read): the hidden-state losses
normalise the target per token anyway. The decoders below are the jnp twins of
the numpy codecs, keyed by the same codec names (store/topk_codecs.py,
store/hidden_codecs.py), so a profile made of known codecs needs nothing here.

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
float32, see `_lean_hidden`).
"""

from __future__ import annotations

import dataclasses
import types

import jax.numpy as jnp
import numpy as np

from store import profiles, sampled, topk_codecs
from store.hidden_codecs import aux_name, hidden_name
from trainer.training.signals import Batch, SampledSignal, TopkSignal


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

    def __post_init__(self):
        if self.profile not in profiles.PROFILES:
            raise ValueError(
                f"store profile {self.profile!r} is unknown; "
                f"store.profiles knows {sorted(profiles.PROFILES)}"
            )
        prof = self.store_profile
        if prof.topk.name not in TOPK_DECODERS or prof.hidden.name not in HIDDEN_DECODERS:
            raise ValueError(
                f"store profile {self.profile!r} ({prof.topk.name} top-k, {prof.hidden.name} "
                f"hidden) has no device decoder; trainer.training.decode knows top-k "
                f"{sorted(TOPK_DECODERS)} and hidden {sorted(HIDDEN_DECODERS)}"
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
    def from_reader(cls, reader) -> Encoding:
        """The encoding of an open `store.StoreReader`'s store (schema + manifest)."""
        return cls.from_schema(reader.schema, reader.manifest["encodings"])

    @classmethod
    def from_schema(cls, s, enc: dict) -> Encoding:
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
        shape = types.SimpleNamespace(
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

    def __post_init__(self):
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
    out = {"tokens": batch[profiles.TOKENS].astype(jnp.int32)}
    # The rollout fields (store/rollout.py): one layout in every profile; no stored mask: all ones.
    if profiles.LOSS_MASK in spec.fields:
        mask = batch[profiles.LOSS_MASK] if e.loss_mask else jnp.ones_like(out["tokens"])
        out["loss_mask"] = mask.astype(jnp.float32)
    if profiles.TOKEN_LOGPROB in spec.fields:
        out["token_logprob"] = batch[profiles.TOKEN_LOGPROB].astype(jnp.float32)
    for field in spec.fields:
        layer = profiles.hidden_layer(field)
        if field == profiles.TOPK:
            out["topk"] = TOPK_DECODERS[prof.topk.name](batch, e)
        elif field == profiles.SAMPLED:
            out["sampled"] = SampledSignal(
                ids=_ids(batch[sampled.IDS], e.samples, e.ids_bits),
                counts=batch[sampled.COUNTS].astype(jnp.int32),
                logprobs=batch[sampled.LOGPROBS].astype(jnp.float32),
            )
        elif layer is not None:
            out["hidden"] = HIDDEN_DECODERS[prof.hidden.name](batch, layer, e)
    return Batch(**out)


def _float16_topk(batch, e: Encoding) -> TopkSignal:
    return TopkSignal(
        ids=_ids(batch[topk_codecs.IDS], e.k, e.ids_bits),
        logprobs=batch[topk_codecs.LOGPROBS].astype(jnp.float32),
    )


def _companded_topk(batch, e: Encoding) -> TopkSignal:
    return TopkSignal(
        ids=_ids(batch[topk_codecs.IDS], e.k, e.ids_bits),
        logprobs=_coded_logprobs(batch[topk_codecs.LOGPROBS], batch[topk_codecs.TOP_LOGPROB]),
    )


def _float16_hidden(batch, layer: int, e: Encoding):
    return batch[hidden_name(layer)].astype(jnp.float32)


def _int8_outliers_hidden(batch, layer: int, e: Encoding):
    return _compact_hidden(
        batch[hidden_name(layer)],
        batch[aux_name(layer, "qstep")],
        batch[aux_name(layer, "outlier_idx")],
        batch[aux_name(layer, "outlier_val")],
    )


def _lean_profile_hidden(batch, layer: int, e: Encoding):
    return _lean_hidden(batch[hidden_name(layer)], batch[aux_name(layer, "step")], e.hidden_signs)


def _ids(stored, n: int, bits: int):
    return stored.astype(jnp.int32) if bits == 0 else unpack_ids(stored, n, bits)


def unpack_ids(packed_xN, n: int, bits: int):
    """int32 [..., n] from the little-endian bit stream of store.profiles.PACKED_IDS_RULE (uint8 [..., ceil(n*bits/8)]).

    Value j occupies stream bits [j*bits, (j+1)*bits); stream bit i is bit
    i % 8 of byte i // 8. The byte offsets are static, so each id is a gather
    of the 5 bytes that can hold it (bits <= 32, shift <= 7), a little-endian
    combine and a shift: no 8x expansion into single bits.
    """
    nbytes = packed_xN.shape[-1]
    if nbytes != -(-n * bits // 8):
        raise ValueError(
            f"packed ids have {nbytes} bytes per position; {n} ids of {bits} bits "
            f"need {-(-n * bits // 8)}"
        )
    start_n = np.arange(n) * bits
    byte0_n, shift_n = start_n // 8, (start_n % 8).astype(np.uint32)
    x = packed_xN.astype(jnp.uint32)
    # Zero bytes past the end: the last ids' 5-byte windows may reach past it.
    x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (5,), jnp.uint32)], axis=-1)
    b = [jnp.take(x, byte0_n + i, axis=-1) for i in range(5)]
    low = b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    value = low >> shift_n
    # Bits from the fifth byte (only when shift + bits > 32); a shift by 32
    # would be out of range, so the shift-0 ids take none of it.
    high = jnp.where(shift_n > 0, b[4] << ((32 - shift_n) % 32), jnp.uint32(0))
    value = value | high
    mask = np.uint32(0xFFFFFFFF) if bits == 32 else np.uint32((1 << bits) - 1)
    return (value & mask).astype(jnp.int32)


def _coded_logprobs(code_xK, top_x):
    """uint8 code -> log-prob: top - LP_RANGE * (code / 254)**2, code 255 = -inf.

    The 256 offsets LP_RANGE * frac * frac are a numpy table made with the
    float32 operations of topk_codecs.CompandedTopk.decode, so the device does one
    gather and one subtract: bitwise the numpy decode (computing the square
    in the step instead lets XLA contract it into a fused multiply-add, one
    float32 ulp off).
    """
    frac_C = np.arange(256, dtype=np.float32) * np.float32(1.0 / 254.0)
    offset_C = np.float32(topk_codecs.LP_RANGE) * frac_C * frac_C
    lp = top_x.astype(jnp.float32)[..., None] - jnp.take(
        jnp.asarray(offset_C), code_xK.astype(jnp.int32)
    )
    return jnp.where(code_xK == topk_codecs.LP_NEG_INF_CODE, -jnp.inf, lp)


def _compact_hidden(q_xD, step_x, idx_xN, val_xN):
    """y = int8 * qstep (exact in float32), outlier channels restored: float32 x/rms(x)."""
    y = q_xD.astype(jnp.float32) * step_x.astype(jnp.float32)[..., None]
    return jnp.put_along_axis(
        y, idx_xN.astype(jnp.int32), val_xN.astype(jnp.float32), axis=-1, inplace=False
    )


def lean_block(hidden_dim: int) -> int:
    """store.lean.group_size: the largest power of two dividing D, capped at 512."""
    return min(hidden_dim & -hidden_dim, 512)


# 2c - 5 for the three codes a byte packs (c_j = (byte // 6**j) % 6); bytes > 215 never occur.
_LEAN_LUT = np.array(
    [[2 * ((v // 6**j) % 6) - 5 for j in range(3)] for v in range(256)], np.float32
)


def sylvester(b: int) -> np.ndarray:
    """The unscaled Sylvester Hadamard matrix H_b (H_1 = [1], H_2n = [[H, H], [H, -H]])."""
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h


def _lean_hidden(packed_xP, step_xG, signs):
    """Lean activations: base-6 unpack, inverse block Hadamard, signs -> float32 x/rms(x).

    c_j = (byte // 6**j) % 6; r = (c - 2.5) * step; y = H_b(r) * float32(1/sqrt(b)) * s,
    as store/lean.py's decode. Computed as H_b @ (2c - 5) times step/2: a
    matmul of small integers (|2c - 5| <= 5, H_b entries +-1, both exact in
    bfloat16; sums |.| <= 5 b exact in the float32 accumulator whatever its
    order), so it is exact on every backend, tensor cores included. And
    step/2 * integer is the float32 value numpy's float32 butterflies also
    reach (every partial sum there is an 11-bit step times an integer below
    2**12, so none rounds); then the one rounding multiply by
    float32(1/sqrt(b)) both sides share.
    """
    D = len(signs)
    b = lean_block(D)
    G = D // b
    m = jnp.take(
        jnp.asarray(_LEAN_LUT, jnp.bfloat16), packed_xP.astype(jnp.int32), axis=0
    )  # [..., P, 3]
    m = m.reshape(packed_xP.shape[:-1] + (-1,))[..., :D]  # channels past D: padding
    m = m.reshape(m.shape[:-1] + (G, b))
    h = jnp.einsum(
        "...gb,bc->...gc",
        m,
        jnp.asarray(sylvester(b), jnp.bfloat16),
        preferred_element_type=jnp.float32,
    )  # exact integers
    r = h * (step_xG.astype(jnp.float32)[..., None] * jnp.float32(0.5))
    y = r * np.float32(1.0 / np.sqrt(b))
    y = y.reshape(y.shape[:-2] + (D,))
    return y * jnp.asarray(np.asarray(signs, np.float32))


# The jnp twins of the numpy decoders, keyed by the codec names (store/topk_codecs.py, store/hidden_codecs.py).
TOPK_DECODERS = {"float16": _float16_topk, "uint8_companded": _companded_topk}
HIDDEN_DECODERS = {
    "float16_rms": _float16_hidden,
    "int8_outliers": _int8_outliers_hidden,
    "lean": _lean_profile_hidden,
}

EXACT = Encoding()  # Batches already holding values (synthetic, tests): decode = casts.
