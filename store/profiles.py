"""Precision profiles: which codec of each signal family a store uses, by name.

A profile turns the writer's float32 inputs into Zarr-readable integer /
float16 arrays and back. Every encoding is deterministic (same input, same
bytes), so re-writing a work unit rewrites identical files.

The signal families and their codecs, each in one module with its array
specs, numpy encoder/decoder and manifest text:

    family    module                 codecs
    tokens    (here)                 ``tokens`` int32 [N,T], every profile
    top-k     store/topk_codecs.py   float16, uint8_companded
    hidden    store/hidden_codecs.py float16_rms, int8_outliers, lean (store/lean.py)
    sampled   store/sampled.py       one layout; zstd and id packing per profile
    rollout   store/rollout.py       loss_mask uint8 [N,T] (tokens family), token_logprob
                                     float32 [N,T]: one layout, every profile

Profile-wide choices: ids bit-packed (``packs_ids``, store/bitpack.py: top-k
and sampled ids alike) and zstd on the id and sampled arrays.

    profile  top-k            hidden         packed ids  B/token at T=2048, k=128, D=2560
    exact    float16          float16_rms    no          5,646 + tokens
    compact  uint8_companded  int8_outliers  yes         <= 3,000 before zstd
    lean     uint8_companded  lean           yes         ~935 with 12 draws, no top-k, V=262,144

Each codec also holds its jnp twins (``encode_jnp`` / ``decode_jnp``,
handed the JAX side by teacher_dump.encode and trainer.training.decode,
which only dispatch: this package never imports JAX), and everything that
names a stored array (writer, reader, verify, loader, device encoder and
decoder) takes the names from ``Profile.field_arrays``. So adding a profile
made of existing codecs is one line in ``PROFILES``; a new array is an edit
of its codec's class; a new codec is one class in its family module plus
its ``CODECS`` line.
"""

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from store import bitpack, errors, hidden_codecs, rollout, sampled, topk_codecs
from store.hidden_codecs import aux_name, hidden_name  # noqa: F401 (the names every reader of a profile uses)
from store.layout import ArraySpec
from store.schema import StoreSchema

PACKED_IDS_RULE = (
    "n ids per position (n = k for topk/ids, samples for sampled/ids) as one little-endian bit stream of "
    "ids_bits bits each: id j = stream bits [j*ids_bits, (j+1)*ids_bits), LSB first; stream bit i = bit (i % 8) "
    "of byte i // 8 (zero-padded to ceil(n*ids_bits/8) bytes). numpy: b = np.unpackbits(a, axis=-1, "
    "bitorder='little')[..., :n*ids_bits].reshape(*a.shape[:-1], n, ids_bits); "
    "ids = (b.astype(np.int64) << np.arange(ids_bits)).sum(-1)"
)
TOKENS = "tokens"
TOPK = "topk"
SAMPLED = "sampled"
# The rollout family's fields (store/rollout.py): one layout, present when the schema asks.
LOSS_MASK, TOKEN_LOGPROB = rollout.LOSS_MASK, rollout.TOKEN_LOGPROB


def ids_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "int32"


def hidden_layer(field: str) -> int | None:
    """The layer of a store field "hidden/<l>" (None for tokens, topk, sampled or an unknown field)."""
    prefix = hidden_codecs.HIDDEN_PREFIX
    if field.startswith(prefix) and field[len(prefix) :].isdigit():
        return int(field[len(prefix) :])
    return None


class Profile:
    """One precision profile: a top-k codec, a hidden codec and the id / zstd choices.

    Attributes:
        name: the manifest's profile name.
        topk: a store.topk_codecs codec.
        hidden: a store.hidden_codecs codec.
        packs_ids: ids bit-packed (store/bitpack.py), with "ids_bits" in the manifest.
        side_zstd: zstd on the top-k and sampled ids.
        sampled_zstd: zstd on the sampled arrays (ids, counts, log-probs).
    """

    def __init__(
        self,
        name: str,
        *,
        topk: str,
        hidden: str,
        packs_ids: bool,
        side_zstd: bool,
        sampled_zstd: bool,
    ):
        self.name = name
        self.topk = topk_codecs.CODECS[topk]
        self.hidden = hidden_codecs.CODECS[hidden]
        self.packs_ids = packs_ids
        self.side_zstd = side_zstd
        self.sampled_zstd = sampled_zstd

    def __repr__(self) -> str:
        return (
            f"Profile({self.name!r}, topk={self.topk.name!r}, hidden={self.hidden.name!r}, "
            f"packs_ids={self.packs_ids})"
        )

    # --- the names: one table for the writer, the reader, the loader and the device decoder ---

    def field_arrays(
        self, schema: StoreSchema, normalized: bool = False
    ) -> dict[str, list[ArraySpec]]:
        """{store field: its stored arrays} of a store with this schema, in storage order.

        Fields: "tokens", "loss_mask" / "token_logprob" (when the schema has
        them, store/rollout.py), "topk" (k > 0), "sampled" (samples > 0),
        "hidden/<l>" per captured layer. ``normalized``: the arrays a
        normalized hidden read needs (no per-token RMS).
        """
        T, V = schema.seq_len, schema.vocab_size
        out = {TOKENS: [ArraySpec(TOKENS, (T,), "int32", ("pos",))]}
        out.update(rollout.field_arrays(schema))
        if schema.k:
            out[TOPK] = self.topk.specs(self, T, schema.k, V)
        if schema.samples:
            out[SAMPLED] = sampled.array_specs(self, T, schema.samples, V)
        for layer in schema.hidden_layers:
            specs = self.hidden.specs(layer, T, schema.hidden_dim)
            if normalized:
                specs = [s for s in specs if s.name != aux_name(layer, "rms")]
            out[hidden_name(layer)] = specs
        return out

    def arrays(self, schema: StoreSchema) -> list[ArraySpec]:
        """Every stored array of a store with this schema."""
        return [spec for specs in self.field_arrays(schema).values() for spec in specs]

    def field_names(self, schema: StoreSchema, field: str, normalized: bool = False) -> list[str]:
        """The stored arrays of one store field (``field_arrays``; [] for a field the store lacks)."""
        return [s.name for s in self.field_arrays(schema, normalized).get(field, [])]

    def topk_array_names(self, schema: StoreSchema) -> list[str]:
        return self.field_names(schema, TOPK)

    def sampled_array_names(self, schema: StoreSchema) -> list[str]:
        return self.field_names(schema, SAMPLED)

    def hidden_array_names(
        self, schema: StoreSchema, layer: int, normalized: bool = False
    ) -> list[str]:
        """Stored arrays a hidden read needs; ``normalized`` reads skip the per-token RMS."""
        return self.field_names(schema, hidden_name(layer), normalized)

    # --- ids (top-k and sampled alike) ---

    def ids_spec(self, name: str, T: int, n: int, V: int, dim: str) -> ArraySpec:
        """How this profile stores n vocabulary ids per position (top-k or sampled)."""
        if self.packs_ids:
            width = bitpack.packed_width(n, bitpack.bits_for(V))
            return ArraySpec(
                name, (T, width), "uint8", ("pos", f"{dim}_packed"), zstd=self.side_zstd
            )
        return ArraySpec(name, (T, n), ids_dtype(V), ("pos", dim), zstd=self.side_zstd)

    def encode_ids(self, ids_xN: np.ndarray, V: int) -> np.ndarray:
        if self.packs_ids:
            return bitpack.pack(ids_xN, bitpack.bits_for(V))
        return ids_xN.astype(ids_dtype(V))

    def encode_ids_jnp(self, jnp: ModuleType, ids_xN: Any, V: int) -> Any:
        """``encode_ids`` in jnp (``jnp`` is jax.numpy, passed in), byte-identical."""
        if self.packs_ids:
            return bitpack.pack_jnp(jnp, ids_xN, bitpack.bits_for(V))
        return ids_xN.astype(ids_dtype(V))

    def decode_ids(
        self, stored_xN: np.ndarray, n: int, V: int | None, dtype: npt.DTypeLike
    ) -> np.ndarray:
        """n ids per position in ``dtype`` (unpacked ones: the stored array itself when the dtype matches)."""
        if not self.packs_ids:
            return stored_xN.astype(dtype, copy=False)
        if V is None:
            raise errors.StoreInputError(
                f"the {self.name} profile bit-packs ids: pass vocab_size= to decode them"
            )
        return bitpack.unpack(stored_xN, n, bitpack.bits_for(V), dtype)

    def describe_ids(self, V: int, what: str) -> str:
        if self.packs_ids:
            return f"uint8 bit-packed vocabulary ids ({bitpack.bits_for(V)} bits each, see packed_ids): {what}"
        return f"{ids_dtype(V)} vocabulary id: {what}"

    # --- the codecs ---

    def check_schema(self, schema: StoreSchema) -> None:
        """Raises StoreInputError when this profile cannot store that schema (StoreSchema.validate calls it)."""
        self.hidden.check_schema(schema)

    def encode_topk(
        self, ids_RxTxK: np.ndarray, logprobs_RxTxK: np.ndarray, vocab_size: int
    ) -> dict:
        return self.topk.encode(self, ids_RxTxK, logprobs_RxTxK, vocab_size)

    def decode_topk(
        self,
        stored: dict,
        ids_dtype: npt.DTypeLike = np.int32,
        logprobs_dtype: npt.DTypeLike = np.float32,
        vocab_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids, logprobs) in the given dtypes from the stored arrays.

        A dtype equal to the stored one returns the stored array itself (no copy).
        ``vocab_size`` is needed only to unpack bit-packed ids (store/bitpack.py).
        """
        return self.topk.decode(self, stored, ids_dtype, logprobs_dtype, vocab_size)

    def encode_hidden(self, layer: int, x_RxTxD: np.ndarray) -> dict:
        return self.hidden.encode(layer, x_RxTxD)

    def decode_hidden(
        self, layer: int, stored: dict, dtype: npt.DTypeLike, normalized: bool = False
    ) -> np.ndarray:
        """Activations x in ``dtype``; ``normalized``: x / rms(x) instead (no RMS multiply).

        A normalized read in the stored dtype returns the stored array itself (no copy).
        """
        return self.hidden.decode(layer, stored, dtype, normalized=normalized)

    # --- the manifest ---

    def describe(self, schema: StoreSchema) -> dict:
        """Manifest entry: per-array dtype and the decoding rule, for readers without this package."""
        return {
            "profile": self.name,
            **self.topk.describe(self, schema),
            **self.hidden.describe(schema),
        }

    def encodings(self, schema: StoreSchema) -> dict:
        """The manifest's ``encodings``: ``describe`` plus the sampled family and the id packing rule."""
        out = self.describe(schema)
        out.update(rollout.describe(schema))
        if schema.samples:
            out.update(sampled.describe(self, schema.vocab_size))
        if self.packs_ids:
            out["ids_bits"] = bitpack.bits_for(schema.vocab_size)
            out["packed_ids"] = PACKED_IDS_RULE
        return out


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "exact",
            topk="float16",
            hidden="float16_rms",
            packs_ids=False,
            side_zstd=False,
            sampled_zstd=False,
        ),
        Profile(
            "compact",
            topk="uint8_companded",
            hidden="int8_outliers",
            packs_ids=True,
            side_zstd=True,
            sampled_zstd=True,
        ),
        # No zstd on the sampled arrays (lean's hidden/<l> has none either: store/lean.py): at k=0, 12 draws,
        # V=262,144 it saved 24 B/token (of 935, which fits <= 1 KB) and cut the loader's read from 0.40x to
        # 0.29x raw (measured). Top-k keeps compact's zstd: it saves 79 B/token on packed ids at k=128.
        Profile(
            "lean",
            topk="uint8_companded",
            hidden="lean",
            packs_ids=True,
            side_zstd=True,
            sampled_zstd=False,
        ),
    )
}
# Profiles of stores written before a profile changed its layout, keyed by name: compact as written
# before ids were bit-packed (a manifest without ``ids_bits``): plain uint16/int32 ids.
LEGACY = {
    "compact": Profile(
        "compact",
        topk="uint8_companded",
        hidden="int8_outliers",
        packs_ids=False,
        side_zstd=True,
        sampled_zstd=True,
    )
}


def for_store(schema: StoreSchema, manifest: dict) -> Profile:
    """The profile a store was written with, from its manifest (a store's readers and writers use this).

    A compact store whose manifest's ``encodings`` has no ``ids_bits`` was
    written before ids were bit-packed: it reads (and resumes) as it was written.

    Raises:
        SchemaMismatchError: a constant of the encoding in the manifest (ids_bits,
            hidden_signs, lean_step, ...) is not the one this package uses.
    """
    profile = get_profile(schema.profile)
    stored = manifest.get("encodings", {})
    if profile.packs_ids and "ids_bits" not in stored and schema.profile in LEGACY:
        return LEGACY[schema.profile]
    for key, value in profile.encodings(schema).items():
        if not isinstance(value, str) and stored.get(key) != value:
            show = lambda v: (repr(v)[:40] + "...") if len(repr(v)) > 40 else repr(v)
            raise errors.SchemaMismatchError(
                f"store manifest has encodings.{key}={show(stored.get(key))}, this package's {schema.profile} "
                f"profile uses {show(value)}; upgrade the store package"
            )
    return profile


def get_profile(name: str) -> Profile:
    """Looks a profile up by name; unknown names raise StoreInputError."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise errors.StoreInputError(
            f"unknown precision profile {name!r}; use one of {sorted(PROFILES)}"
        ) from None
