"""Precision profiles: how each logical field is encoded into stored arrays.

A profile turns the writer's float32 inputs into Zarr-readable integer /
float16 arrays and back. Every encoding is deterministic (same input, same
bytes), so re-writing a work unit rewrites identical files.

``exact`` (per token at T=2048, k=128, D=2560: 5,646 B + tokens):
  * ``topk/ids``       uint16 (int32 if V > 65,536)  [N,T,K]
  * ``topk/logprobs``  float16                        [N,T,K]
  * ``hidden/<l>``     float16 of x / rms(x)          [N,T,D]
    ``hidden_aux/<l>/rms`` float32 per-token RMS      [N,T]
  zarr-python cannot read bfloat16, and the RMS-normalised vector has every
  element <= sqrt(D) in magnitude, so float16 (3 more mantissa bits than
  bfloat16) cannot overflow; decode is ``hidden * rms``. A normalized read
  (``StoreReader.read(..., hidden_normalized=True)``) returns ``hidden``
  itself: a consumer that normalises per token needs no decode at all.

``compact`` (<= 3,000 B/token at that geometry, before zstd):
  * ``topk/ids``            uint16/int32, zstd                     [N,T,K]
  * ``topk/top_logprob``    float32 top-1 log-prob                 [N,T]
  * ``topk/logprobs``       uint8 code, zstd                       [N,T,K]
      lp = top - LP_RANGE * (code / 254)**2, code 255 = -inf.
      Square-root companding spends the codes where the probability mass
      is (near the top-1), which is what the KL to the teacher weighs.
  * ``hidden/<l>``          int8, zstd                             [N,T,D]
    ``hidden_aux/<l>/rms``  float32 per-token RMS                  [N,T]
    ``hidden_aux/<l>/qstep`` float16 step of the int8 grid         [N,T]
    ``hidden_aux/<l>/outlier_idx`` uint16 channel of the n largest [N,T,n]
    ``hidden_aux/<l>/outlier_val`` float16 their normalised value  [N,T,n]
      y = x / rms; the n = NUM_OUTLIERS largest |y| (ties to the lower channel,
      as lax.top_k: store/topn.py) are kept in float16, the
      rest is quantised on a per-token grid qstep = max|rest| / 127.
      Decode: y = int8 * qstep; y[idx] = val; x = y * rms (a normalized
      read stops at y).
      Residual streams carry a few channels 10-100x larger than the rest;
      an absmax grid set by them would flatten everything else.

Adding a profile: subclass ``Profile`` and register it in ``PROFILES``.
"""
import numpy as np

from store import bitpack, errors, lean, sampled
from store.layout import ArraySpec
from store.topn import top_n_channels

NUM_OUTLIERS = 8
PACKED_IDS_RULE = (
    "n ids per position (n = k for topk/ids, samples for sampled/ids) as one little-endian bit stream of "
    "ids_bits bits each: id j = stream bits [j*ids_bits, (j+1)*ids_bits), LSB first; stream bit i = bit (i % 8) "
    "of byte i // 8 (zero-padded to ceil(n*ids_bits/8) bytes). numpy: b = np.unpackbits(a, axis=-1, "
    "bitorder='little')[..., :n*ids_bits].reshape(*a.shape[:-1], n, ids_bits); "
    "ids = (b.astype(np.int64) << np.arange(ids_bits)).sum(-1)")
LP_RANGE = 32.0  # nats below the top-1 covered by the uint8 log-prob code
LP_NEG_INF_CODE = 255


def ids_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "int32"


def hidden_name(layer: int) -> str:
    return f"hidden/{layer}"


def aux_name(layer: int, what: str) -> str:
    return f"hidden_aux/{layer}/{what}"


def _rms(x_RxTxD: np.ndarray) -> np.ndarray:
    """Per-token RMS (float32) and the same with zeros replaced by 1 (safe divisor)."""
    rms = np.sqrt(np.mean(np.square(x_RxTxD), axis=-1, dtype=np.float32)).astype(np.float32)
    return rms, np.where(rms > 0, rms, np.float32(1.0))


class Profile:
    """Base profile: tokens are stored as-is in every profile."""
    name = ""
    side_zstd = False  # zstd on the top-k ids
    sampled_zstd = False  # zstd on the sampled arrays (ids, counts, log-probs)
    packs_ids = False  # ids bit-packed (store/bitpack.py), with "ids_bits" in the manifest

    def arrays(self, schema) -> list[ArraySpec]:
        """Every stored array of a store with this schema."""
        T, K = schema.seq_len, schema.k
        specs = [ArraySpec("tokens", (T,), "int32", ("pos",))]
        if K:
            specs += self.topk_arrays(T, K, schema.vocab_size)
        if schema.samples:
            specs += sampled.array_specs(self, T, schema.samples, schema.vocab_size)
        for layer in schema.hidden_layers:
            specs += self.hidden_arrays(layer, T, schema.hidden_dim)
        return specs

    def encodings(self, schema) -> dict:
        """The manifest's ``encodings``: ``describe`` plus the sampled family and the id packing rule."""
        out = self.describe(schema)
        if schema.samples:
            out.update(sampled.describe(self, schema.vocab_size))
        if self.packs_ids:
            out["ids_bits"] = bitpack.bits_for(schema.vocab_size)
            out["packed_ids"] = PACKED_IDS_RULE
        return out

    def sampled_array_names(self, schema) -> list[str]:
        return [s.name for s in sampled.array_specs(self, schema.seq_len, schema.samples, schema.vocab_size)]

    def ids_spec(self, name, T, n, V, dim) -> ArraySpec:
        """How this profile stores n vocabulary ids per position (top-k or sampled)."""
        if self.packs_ids:
            width = bitpack.packed_width(n, bitpack.bits_for(V))
            return ArraySpec(name, (T, width), "uint8", ("pos", f"{dim}_packed"), zstd=self.side_zstd)
        return ArraySpec(name, (T, n), ids_dtype(V), ("pos", dim), zstd=self.side_zstd)

    def encode_ids(self, ids_xN: np.ndarray, V: int) -> np.ndarray:
        if self.packs_ids:
            return bitpack.pack(ids_xN, bitpack.bits_for(V))
        return ids_xN.astype(ids_dtype(V))

    def decode_ids(self, stored_xN: np.ndarray, n: int, V: int | None, dtype) -> np.ndarray:
        """n ids per position in ``dtype`` (unpacked ones: the stored array itself when the dtype matches)."""
        if not self.packs_ids:
            return stored_xN.astype(dtype, copy=False)
        if V is None:
            raise errors.StoreInputError(f"the {self.name} profile bit-packs ids: pass vocab_size= to decode them")
        return bitpack.unpack(stored_xN, n, bitpack.bits_for(V), dtype)

    def describe_ids(self, V: int, what: str) -> str:
        if self.packs_ids:
            return f"uint8 bit-packed vocabulary ids ({bitpack.bits_for(V)} bits each, see packed_ids): {what}"
        return f"{ids_dtype(V)} vocabulary id: {what}"

    def check_schema(self, schema):
        """Raises StoreInputError when this profile cannot store that schema (StoreSchema.validate calls it)."""

    def topk_array_names(self, schema) -> list[str]:
        return [s.name for s in self.topk_arrays(schema.seq_len, schema.k, schema.vocab_size)]

    def hidden_array_names(self, schema, layer, normalized: bool = False) -> list[str]:
        """Stored arrays a hidden read needs; ``normalized`` reads skip the per-token RMS."""
        names = [s.name for s in self.hidden_arrays(layer, schema.seq_len, schema.hidden_dim)]
        return [n for n in names if n != aux_name(layer, "rms")] if normalized else names

    def topk_arrays(self, T, K, V) -> list[ArraySpec]:
        raise NotImplementedError

    def hidden_arrays(self, layer, T, D) -> list[ArraySpec]:
        raise NotImplementedError

    def encode_topk(self, ids_RxTxK, logprobs_RxTxK, vocab_size) -> dict:
        raise NotImplementedError

    def decode_topk(self, stored: dict, ids_dtype=np.int32, logprobs_dtype=np.float32, vocab_size=None):
        """Returns (ids, logprobs) in the given dtypes from the stored arrays.

        A dtype equal to the stored one returns the stored array itself (no copy).
        ``vocab_size`` is needed only to unpack bit-packed ids (store/bitpack.py).
        """
        raise NotImplementedError

    def encode_hidden(self, layer, x_RxTxD) -> dict:
        raise NotImplementedError

    def decode_hidden(self, layer, stored: dict, dtype, normalized: bool = False) -> np.ndarray:
        """Activations x in ``dtype``; ``normalized``: x / rms(x) instead (no RMS multiply).

        A normalized read in the stored dtype returns the stored array itself (no copy).
        """
        raise NotImplementedError

    def describe(self, schema) -> dict:
        """Manifest entry: per-array dtype and the decoding rule, for readers without this package."""
        raise NotImplementedError


class ExactProfile(Profile):
    """16-bit everything; readable and decodable with plain numpy."""
    name = "exact"

    def topk_arrays(self, T, K, V):
        return [self.ids_spec("topk/ids", T, K, V, "k"),
                ArraySpec("topk/logprobs", (T, K), "float16", ("pos", "k"))]

    def hidden_arrays(self, layer, T, D):
        return [ArraySpec(hidden_name(layer), (T, D), "float16", ("pos", "d")),
                ArraySpec(aux_name(layer, "rms"), (T,), "float32", ("pos",))]

    def encode_topk(self, ids_RxTxK, logprobs_RxTxK, vocab_size):
        return {"topk/ids": self.encode_ids(ids_RxTxK, vocab_size),
                "topk/logprobs": np.minimum(logprobs_RxTxK, 0).astype(np.float16)}

    def decode_topk(self, stored, ids_dtype=np.int32, logprobs_dtype=np.float32, vocab_size=None):
        lp = stored["topk/logprobs"]
        return (self.decode_ids(stored["topk/ids"], lp.shape[-1], vocab_size, ids_dtype),
                lp.astype(logprobs_dtype, copy=False))

    def encode_hidden(self, layer, x_RxTxD):
        rms, safe = _rms(x_RxTxD)
        # Divide straight into float16 (numpy casts chunk by chunk): no
        # full-size float32 temporary.
        y16 = np.empty(x_RxTxD.shape, np.float16)
        np.divide(x_RxTxD, safe[..., None], out=y16, casting="same_kind")
        return {hidden_name(layer): y16, aux_name(layer, "rms"): rms}

    def decode_hidden(self, layer, stored, dtype, normalized=False):
        y = stored[hidden_name(layer)]
        if normalized:
            return y.astype(dtype, copy=False)  # float16: the stored bytes, zero decode work
        rms = stored[aux_name(layer, "rms")]
        out = np.multiply(y, rms[..., None], dtype=np.float32)
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)

    def describe(self, schema):
        return {
            "profile": self.name,
            "topk/ids": "vocabulary id; slots dropped by top-p hold id 0",
            "topk/logprobs": "float16 log-prob at tau=1, sorted descending; -inf = dropped slot",
            "hidden/<l>": "float16 x/rms(x) (per-token RMS-normalised residual stream after l blocks)",
            "hidden_aux/<l>/rms": "float32 per-token RMS; x = hidden/<l> * rms[..., None]",
        }


class CompactProfile(Profile):
    """int8 activations with outlier channels, uint8 companded log-probs, zstd."""
    name = "compact"
    side_zstd = True
    sampled_zstd = True
    packs_ids = True

    def topk_arrays(self, T, K, V):
        return [self.ids_spec("topk/ids", T, K, V, "k"),
                ArraySpec("topk/logprobs", (T, K), "uint8", ("pos", "k"), zstd=True),
                ArraySpec("topk/top_logprob", (T,), "float32", ("pos",))]

    def hidden_arrays(self, layer, T, D):
        n = min(NUM_OUTLIERS, D)
        return [ArraySpec(hidden_name(layer), (T, D), "int8", ("pos", "d"), zstd=True),
                ArraySpec(aux_name(layer, "rms"), (T,), "float32", ("pos",)),
                ArraySpec(aux_name(layer, "qstep"), (T,), "float16", ("pos",)),
                ArraySpec(aux_name(layer, "outlier_idx"), (T, n), "uint16", ("pos", "outlier")),
                ArraySpec(aux_name(layer, "outlier_val"), (T, n), "float16", ("pos", "outlier"))]

    def encode_topk(self, ids_RxTxK, logprobs_RxTxK, vocab_size):
        lp = np.minimum(logprobs_RxTxK, 0).astype(np.float32)
        top = lp[..., 0]
        finite = np.isfinite(lp) & np.isfinite(top)[..., None]
        delta = np.where(finite, top[..., None] - lp, 0.0)
        code = np.rint(254.0 * np.sqrt(np.clip(delta, 0.0, LP_RANGE) / LP_RANGE))
        code = np.where(finite, code, LP_NEG_INF_CODE).astype(np.uint8)
        return {"topk/ids": self.encode_ids(ids_RxTxK, vocab_size),
                "topk/logprobs": code,
                "topk/top_logprob": np.where(np.isfinite(top), top, -np.inf).astype(np.float32)}

    def decode_topk(self, stored, ids_dtype=np.int32, logprobs_dtype=np.float32, vocab_size=None):
        code = stored["topk/logprobs"]
        top = stored["topk/top_logprob"]
        frac = code.astype(np.float32) * np.float32(1.0 / 254.0)
        lp = top[..., None] - np.float32(LP_RANGE) * frac * frac
        lp[code == LP_NEG_INF_CODE] = -np.inf
        ids = self.decode_ids(stored["topk/ids"], code.shape[-1], vocab_size, ids_dtype)
        return ids, lp.astype(logprobs_dtype, copy=False)

    def encode_hidden(self, layer, x_RxTxD):
        D = x_RxTxD.shape[-1]
        n = min(NUM_OUTLIERS, D)
        rms, safe = _rms(x_RxTxD)
        y = np.divide(x_RxTxD, safe[..., None], dtype=np.float32)
        a = np.abs(y)
        idx = top_n_channels(a, n)
        val = np.take_along_axis(y, idx, axis=-1)
        np.put_along_axis(y, idx, 0.0, axis=-1)
        np.put_along_axis(a, idx, 0.0, axis=-1)  # a is now |y| with the outliers zeroed
        step = (np.max(a, axis=-1) / 127.0).astype(np.float16)
        step = np.where(step > 0, step, np.float16(1.0))
        # In place, same arithmetic as clip(rint(y / step)): no full-size temporaries.
        np.divide(y, step.astype(np.float32)[..., None], out=y)
        np.rint(y, out=y)
        np.clip(y, -127, 127, out=y)
        q = y.astype(np.int8)
        return {hidden_name(layer): q, aux_name(layer, "rms"): rms,
                aux_name(layer, "qstep"): step,
                aux_name(layer, "outlier_idx"): idx.astype(np.uint16),
                aux_name(layer, "outlier_val"): val.astype(np.float16)}

    def decode_hidden(self, layer, stored, dtype, normalized=False):
        q = stored[hidden_name(layer)]
        idx = stored[aux_name(layer, "outlier_idx")].astype(np.intp)
        val = stored[aux_name(layer, "outlier_val")]
        step = stored[aux_name(layer, "qstep")].astype(np.float32)
        if normalized:
            # y = q * qstep, outliers restored. Computed in float32 and cast
            # by the ufunc's buffered output loop (no full-size float32
            # temporary when dtype is float16); int8 * float16-step is exact
            # in float32, so the float16 result is the correctly rounded y.
            y = np.empty(q.shape, dtype)
            np.multiply(q, step[..., None], out=y, dtype=np.float32, casting="unsafe")
            np.put_along_axis(y, idx, val.astype(dtype, copy=False), axis=-1)
            return y
        rms = stored[aux_name(layer, "rms")]
        # One pass over the output: fold rms into the per-token step first.
        x = np.multiply(q, (step * rms)[..., None], dtype=np.float32)
        np.put_along_axis(x, idx, val.astype(np.float32) * rms[..., None], axis=-1)
        return x if np.dtype(dtype) == np.float32 else x.astype(dtype)

    def describe(self, schema):
        return {
            "profile": self.name,
            "topk/ids": self.describe_ids(schema.vocab_size, "slots dropped by top-p hold id 0")
            if self.packs_ids else "vocabulary id; slots dropped by top-p hold id 0",
            "topk/top_logprob": "float32 top-1 log-prob at tau=1",
            "topk/logprobs": (f"uint8 code c: logprob = top_logprob - {LP_RANGE} * (c/254)**2; "
                              f"c = {LP_NEG_INF_CODE} means -inf (dropped slot)"),
            "hidden/<l>": "int8 q of y = x/rms(x) with the outlier channels zeroed",
            "hidden_aux/<l>/rms": "float32 per-token RMS of x",
            "hidden_aux/<l>/qstep": "float16 per-token step: y = q * qstep",
            "hidden_aux/<l>/outlier_idx": "uint16 channels of the largest |y| (then y[idx] = outlier_val)",
            "hidden_aux/<l>/outlier_val": "float16 y at those channels; finally x = y * rms[..., None]",
            "num_outliers": min(NUM_OUTLIERS, schema.hidden_dim) if schema.hidden_dim else NUM_OUTLIERS,
        }


class LeanProfile(CompactProfile):
    """6-level rotated activations (store/lean.py); top-k as compact; packed ids."""
    name = "lean"
    # No zstd on the sampled arrays (lean's hidden/<l> has none either: store/lean.py): at k=0, 12 draws,
    # V=262,144 it saved 24 B/token (of 935, which fits <= 1 KB) and cut the loader's read from 0.40x to
    # 0.29x raw (measured). Top-k keeps compact's zstd: it saves 79 B/token on packed ids at k=128.
    sampled_zstd = False

    def check_schema(self, schema):
        lean.check_dim(schema.hidden_dim)

    def hidden_arrays(self, layer, T, D):
        return lean.hidden_specs(hidden_name(layer), lambda what: aux_name(layer, what), T, D)

    def encode_hidden(self, layer, x_RxTxD):
        rms, safe = _rms(x_RxTxD)
        codes, step = lean.encode(x_RxTxD, safe)
        return {hidden_name(layer): codes, aux_name(layer, "rms"): rms, aux_name(layer, "step"): step}

    def decode_hidden(self, layer, stored, dtype, normalized=False):
        codes, step = stored[hidden_name(layer)], stored[aux_name(layer, "step")]
        D = lean.dim_of(codes.shape[-1], step.shape[-1])
        rms = None if normalized else stored[aux_name(layer, "rms")]
        return lean.decode(codes, step, D, dtype, rms)

    def describe(self, schema):
        out = {key: value for key, value in super().describe(schema).items()
               if not key.startswith("hidden") and key != "num_outliers"}
        out["profile"] = self.name
        if schema.hidden_dim:
            out.update(lean.describe(schema.hidden_dim))
        return out


class LegacyCompactProfile(CompactProfile):
    """compact as written before ids were bit-packed (a manifest without ``ids_bits``): plain uint16/int32 ids."""
    packs_ids = False


PROFILES = {p.name: p for p in (ExactProfile(), CompactProfile(), LeanProfile())}
# Profiles of stores written before a profile changed its layout, keyed by name.
_LEGACY = {"compact": LegacyCompactProfile()}


def for_store(schema, manifest: dict) -> Profile:
    """The profile a store was written with, from its manifest (a store's readers and writers use this).

    A compact store whose manifest's ``encodings`` has no ``ids_bits`` was
    written before ids were bit-packed: it reads (and resumes) as it was written.

    Raises:
        SchemaMismatchError: a constant of the encoding in the manifest (ids_bits,
            hidden_signs, lean_step, ...) is not the one this package uses.
    """
    profile = get_profile(schema.profile)
    stored = manifest.get("encodings", {})
    if profile.packs_ids and "ids_bits" not in stored and schema.profile in _LEGACY:
        return _LEGACY[schema.profile]
    for key, value in profile.encodings(schema).items():
        if not isinstance(value, str) and stored.get(key) != value:
            show = lambda v: (repr(v)[:40] + "...") if len(repr(v)) > 40 else repr(v)
            raise errors.SchemaMismatchError(
                f"store manifest has encodings.{key}={show(stored.get(key))}, this package's {schema.profile} "
                f"profile uses {show(value)}; upgrade the store package")
    return profile


def get_profile(name: str) -> Profile:
    """Looks a profile up by name; unknown names raise StoreInputError."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise errors.StoreInputError(
            f"unknown precision profile {name!r}; use one of {sorted(PROFILES)}") from None
