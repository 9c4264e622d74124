"""Decoding stored store arrays inside the jitted train step (jnp).

The loader (trainer.training.data) ships the arrays AS STORED: integer codes
and their side arrays, read from disk with no host decode pass. The step
turns them into values here, where the work is cheap and parallel:

    batch = decode_batch(batch, encoding)   # top of methods.loss_fn, inside jit

Batch layout: one flat dict, every array batch dim first (so
`sharding.batch_sharding` splits each over data x fsdp), and per value key
only the stored arrays that key needs (`Encoding.batch_ndims`), so a phase
reads nothing it does not use. Stored name -> batch key: "/" -> "_", the
hidden layer dropped ("hidden_aux/<l>/qstep" -> "hidden_qstep"). Activations
are read RMS-normalised (x / rms(x), the per-token RMS is never read): the
hidden-state losses normalise the target per token anyway.

    value key       exact                  compact                              lean
    tokens          int32 [B,T]            (same)                               (same)
    topk_ids        u16/i32 [B,T,K]        packed u8 [B,T,ceil(K*bits/8)]       packed
    topk_logprobs   f16 [B,T,K]            u8 code [B,T,K] + topk_top_logprob   as compact
    hidden          f16 y [B,T,D]          i8 q + hidden_qstep f16 [B,T]        u8 [B,T,ceil(D/3)]
                                           + hidden_outlier_idx/val [B,T,n]     + hidden_step f16 [B,T,G]
    sampled_ids     u16/i32 [B,T,S]        packed u8 [B,T,ceil(S*bits/8)]       packed
    sampled_counts  u8 [B,T,S]             (same)                               (same)
    sampled_logprobs f16 [B,T,S]           (same)                               (same)

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
import math

import jax.numpy as jnp
import numpy as np

from store import profiles

PROFILES = ("exact", "compact", "lean")

# Stored arrays per value key and profile: (stored name with "{l}" for the
# hidden layer, ndim of the batch array). The ONE table the loader (what to
# read), the step's shardings (batch_ndims) and the decoder agree on.
_TOKENS = {"tokens": (("tokens", 2),)}
_SAMPLED = {"sampled_ids": (("sampled/ids", 3),),
            "sampled_counts": (("sampled/counts", 3),),
            "sampled_logprobs": (("sampled/logprobs", 3),)}
_LAYOUT = {
    "exact": {**_TOKENS, **_SAMPLED,
              "topk_ids": (("topk/ids", 3),),
              "topk_logprobs": (("topk/logprobs", 3),),
              "hidden": (("hidden/{l}", 3),)},
    "compact": {**_TOKENS, **_SAMPLED,
                "topk_ids": (("topk/ids", 3),),
                "topk_logprobs": (("topk/logprobs", 3), ("topk/top_logprob", 2)),
                "hidden": (("hidden/{l}", 3), ("hidden_aux/{l}/qstep", 2),
                           ("hidden_aux/{l}/outlier_idx", 3), ("hidden_aux/{l}/outlier_val", 3))},
    "lean": {**_TOKENS, **_SAMPLED,
             "topk_ids": (("topk/ids", 3),),
             "topk_logprobs": (("topk/logprobs", 3), ("topk/top_logprob", 2)),
             "hidden": (("hidden/{l}", 3), ("hidden_aux/{l}/step", 3))},
}


def batch_key(stored_name: str) -> str:
    """The batch key of a stored array: "hidden_aux/3/qstep" -> "hidden_qstep"."""
    parts = stored_name.split("/")
    if parts[0] in ("hidden", "hidden_aux"):
        parts = ["hidden"] + parts[2:]
    return "_".join(parts)


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How a store's arrays are encoded: a static (hashable) description for jit.

    Attributes:
        profile: "exact", "compact" or "lean".
        vocab_size: V (ids are < V).
        k: stored top-k slots K (0: none).
        samples: sampled slots S (0: none).
        hidden_dim: D of the stored activations (0: none).
        ids_bits: bits per packed id (0: ids stored as u16/i32, unpacked).
        hidden_signs: lean only: the D rotation signs (+1/-1) from the manifest.
    """

    profile: str = "exact"
    vocab_size: int = 0
    k: int = 0
    samples: int = 0
    hidden_dim: int = 0
    ids_bits: int = 0
    hidden_signs: tuple[int, ...] = ()

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"store profile {self.profile!r} has no device decoder; "
                             f"trainer.training.decode knows {list(PROFILES)}")
        if self.profile == "lean" and self.hidden_dim and len(self.hidden_signs) != self.hidden_dim:
            raise ValueError(f"lean store: {len(self.hidden_signs)} hidden_signs in the manifest "
                             f"for hidden_dim={self.hidden_dim}; the store's manifest is damaged")
        if not 0 <= self.ids_bits <= 32:
            raise ValueError(f"ids_bits={self.ids_bits} is outside 0..32; the manifest is damaged")

    @classmethod
    def from_reader(cls, reader) -> "Encoding":
        """The encoding of an open `store.StoreReader`'s store (schema + manifest)."""
        return cls.from_schema(reader.schema, reader.manifest["encodings"])

    @classmethod
    def from_schema(cls, s, enc: dict) -> "Encoding":
        """From a StoreSchema and the manifest's "encodings" entry (`Profile.describe`)."""
        # A store written before packed ids has no "ids_bits": ids stored as u16/i32.
        ids_bits = int(enc["ids_bits"]) if "ids_bits" in enc else 0
        # Lean rotation signs (listed only when the store has activations).
        signs = tuple(int(x) for x in enc["hidden_signs"]) if s.profile == "lean" and s.hidden_dim else ()
        return cls(profile=s.profile, vocab_size=int(s.vocab_size), k=int(s.k),
                   samples=int(s.samples), hidden_dim=int(s.hidden_dim),
                   ids_bits=ids_bits, hidden_signs=signs)

    def batch_ndims(self, value_keys) -> dict[str, int]:
        """{batch key: ndim} of what the loader yields for the phase's value keys."""
        out = {}
        for key in value_keys:
            for name, ndim in self._entries(key):
                out[batch_key(name)] = ndim
        return out

    def stored_names(self, value_keys, hidden_layer: int) -> list[str]:
        """Stored array names to read for the value keys (hidden of `hidden_layer`)."""
        names = []
        for key in value_keys:
            names += [name.format(l=hidden_layer) for name, _ in self._entries(key)]
        return list(dict.fromkeys(names))

    def _entries(self, key):
        layout = _LAYOUT[self.profile]
        if key not in layout:
            raise ValueError(f"unknown batch key {key!r}; use one of {sorted(layout)}")
        return layout[key]


EXACT = Encoding()  # Batches already holding values (synthetic, tests): decode = casts.


def decode_batch(batch: dict, encoding: Encoding) -> dict:
    """Stored arrays -> values (jnp; call inside jit). Only the keys present are decoded.

    Returns:
        {"tokens": int32, "topk_ids": int32, "topk_logprobs": float32,
         "hidden": float32 x/rms(x), "sampled_ids": int32, "sampled_counts": int32,
         "sampled_logprobs": float32} for the value keys the batch holds.
    """
    e = encoding
    out = {}
    if "tokens" in batch:
        out["tokens"] = batch["tokens"].astype(jnp.int32)
    if "topk_ids" in batch:
        out["topk_ids"] = _ids(batch["topk_ids"], e.k, e.ids_bits)
    if "topk_logprobs" in batch:
        out["topk_logprobs"] = (batch["topk_logprobs"].astype(jnp.float32) if e.profile == "exact"
                                else _coded_logprobs(batch["topk_logprobs"], batch["topk_top_logprob"]))
    if "hidden" in batch:
        if e.profile == "exact":
            out["hidden"] = batch["hidden"].astype(jnp.float32)
        elif e.profile == "compact":
            out["hidden"] = _compact_hidden(batch["hidden"], batch["hidden_qstep"],
                                            batch["hidden_outlier_idx"], batch["hidden_outlier_val"])
        else:
            out["hidden"] = _lean_hidden(batch["hidden"], batch["hidden_step"], e.hidden_signs)
    if "sampled_ids" in batch:
        out["sampled_ids"] = _ids(batch["sampled_ids"], e.samples, e.ids_bits)
    if "sampled_counts" in batch:
        out["sampled_counts"] = batch["sampled_counts"].astype(jnp.int32)
    if "sampled_logprobs" in batch:
        out["sampled_logprobs"] = batch["sampled_logprobs"].astype(jnp.float32)
    return out


def _ids(stored, n: int, bits: int):
    return stored.astype(jnp.int32) if bits == 0 else unpack_ids(stored, n, bits)


def unpack_ids(packed_xN, n: int, bits: int):
    """int32 [..., n] from the little-endian bit stream of SPEC12 §3 (uint8 [..., ceil(n*bits/8)]).

    Value j occupies stream bits [j*bits, (j+1)*bits); stream bit i is bit
    i % 8 of byte i // 8. The byte offsets are static, so each id is a gather
    of the 5 bytes that can hold it (bits <= 32, shift <= 7), a little-endian
    combine and a shift: no 8x expansion into single bits.
    """
    nbytes = packed_xN.shape[-1]
    if nbytes != -(-n * bits // 8):
        raise ValueError(f"packed ids have {nbytes} bytes per position; {n} ids of {bits} bits "
                         f"need {-(-n * bits // 8)}")
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
    float32 operations of CompactProfile.decode_topk, so the device does one
    gather and one subtract: bitwise the numpy decode (computing the square
    in the step instead lets XLA contract it into a fused multiply-add, one
    float32 ulp off).
    """
    frac_C = np.arange(256, dtype=np.float32) * np.float32(1.0 / 254.0)
    offset_C = np.float32(profiles.LP_RANGE) * frac_C * frac_C
    lp = top_x.astype(jnp.float32)[..., None] - jnp.take(jnp.asarray(offset_C), code_xK.astype(jnp.int32))
    return jnp.where(code_xK == profiles.LP_NEG_INF_CODE, -jnp.inf, lp)


def _compact_hidden(q_xD, step_x, idx_xN, val_xN):
    """y = int8 * qstep (exact in float32), outlier channels restored: float32 x/rms(x)."""
    y = q_xD.astype(jnp.float32) * step_x.astype(jnp.float32)[..., None]
    return jnp.put_along_axis(y, idx_xN.astype(jnp.int32), val_xN.astype(jnp.float32), axis=-1,
                              inplace=False)


def lean_block(hidden_dim: int) -> int:
    """SPEC12 §2: the largest power of two dividing D, capped at 512."""
    return min(hidden_dim & -hidden_dim, 512)


# 2c - 5 for the three codes a byte packs (c_j = (byte // 6**j) % 6); bytes > 215 never occur.
_LEAN_LUT = np.array([[2 * ((v // 6 ** j) % 6) - 5 for j in range(3)] for v in range(256)], np.float32)


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
    m = jnp.take(jnp.asarray(_LEAN_LUT, jnp.bfloat16), packed_xP.astype(jnp.int32), axis=0)  # [..., P, 3]
    m = m.reshape(packed_xP.shape[:-1] + (-1,))[..., :D]              # channels past D: padding
    m = m.reshape(m.shape[:-1] + (G, b))
    h = jnp.einsum("...gb,bc->...gc", m, jnp.asarray(sylvester(b), jnp.bfloat16),
                   preferred_element_type=jnp.float32)                 # exact integers
    r = h * (step_xG.astype(jnp.float32)[..., None] * jnp.float32(0.5))
    y = r * np.float32(1.0 / np.sqrt(b))
    y = y.reshape(y.shape[:-2] + (D,))
    return y * jnp.asarray(np.asarray(signs, np.float32))
