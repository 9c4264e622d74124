"""The store profiles' encoders in jnp, run on the device after the extraction step.

``encode_signal(signal, schema)`` maps the extraction step's outputs
(``{"topk_ids", "topk_logprobs", "hidden": {l: ...}}``, extract.py) to the
stored arrays of the schema's profile (``store.profiles``), ``{array name:
[B, ...]}``, inside jit. Composed after the extraction step
(``make_encoded_extract_fn``), the device→host copy carries only the encoded
bytes (compact: 2.98 KB/token before zstd at T=2048, k=128, D=2560 instead of
11.3 KB of float32 signal) and the host only writes them
(``StoreWriter.write_unit_encoded``). Ids are bit-packed as the profile
packs them (``pack_ids``, store/bitpack.py; integer ops, exact on any backend).

Byte-identical to the numpy encoders of ``store.profiles`` on CPU (tested;
the arithmetic is built from encode_ops.py's bit-exact twins of numpy's),
tied compact outliers (host and device: ties to the lower channel,
store/topn.py) and lean steps (both: numpy's float32 pairwise mean of
squares, store/lean.py) included.

A resume re-runs the same encoder, so it rewrites the same bytes either way.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from store import (
    bitpack,
    hidden_codecs,
    profiles,
    sampled,
    topk_codecs,
)
from store import (
    errors as store_errors,
)
from store import (
    lean as store_lean,
)
from store.hidden_codecs import aux_name, hidden_name
from teacher_dump.encode_ops import F32, divide, fwht, mean_square, pack_ids, rms, top_n_channels
from trainer.model.errors import ModelInputError


def encode_ids(ids_XxN: jax.Array, vocab_size: int, packs_ids: bool) -> jax.Array:
    """Ids as the profile stores them (``Profile.encode_ids``): bit-packed, or in the store's id dtype."""
    if packs_ids:
        return pack_ids(ids_XxN, bitpack.bits_for(vocab_size))
    return ids_XxN.astype(profiles.ids_dtype(vocab_size))


def encode_sampled(signal: dict, vocab_size: int, packs_ids: bool) -> dict:
    """``store.sampled.encode``: ids as the profile stores ids, uint8 counts, float16 log-probs."""
    return {
        sampled.IDS: encode_ids(signal["sampled_ids"], vocab_size, packs_ids),
        sampled.COUNTS: signal["sampled_counts"].astype(jnp.uint8),
        sampled.LOGPROBS: jnp.minimum(signal["sampled_logprobs"].astype(F32), 0).astype(
            jnp.float16
        ),
    }


# --- exact -------------------------------------------------------------------------------------


def exact_hidden(layer: int, x_XxD: jax.Array) -> dict:
    """``hidden_codecs.Float16Hidden.encode``: float16 x / rms(x) and the float32 RMS."""
    x = x_XxD.astype(F32)
    r, safe = rms(x)
    return {
        hidden_name(layer): divide(x, safe[..., None]).astype(jnp.float16),
        aux_name(layer, "rms"): r,
    }


def exact_topk(ids_XxK, logprobs_XxK, vocab_size: int, packs_ids: bool = False) -> dict:
    """``topk_codecs.Float16Topk.encode``: ids as the profile stores them, float16 log-probs."""
    return {
        topk_codecs.IDS: encode_ids(ids_XxK, vocab_size, packs_ids),
        topk_codecs.LOGPROBS: jnp.minimum(logprobs_XxK.astype(F32), 0).astype(jnp.float16),
    }


# --- compact -----------------------------------------------------------------------------------


def compact_hidden(layer: int, x_XxD: jax.Array) -> dict:
    """``hidden_codecs.OutlierInt8Hidden.encode``: int8 grid per token, n outlier channels in float16."""
    D = x_XxD.shape[-1]
    n = min(hidden_codecs.NUM_OUTLIERS, D)
    x = x_XxD.astype(F32)
    r, safe = rms(x)
    y = divide(x, safe[..., None])
    a = jnp.abs(y)
    idx, outlier = top_n_channels(a, n)
    val = jnp.take_along_axis(y, idx, axis=-1)
    y = jnp.where(outlier, F32(0.0), y)
    a = jnp.where(outlier, F32(0.0), a)
    step = divide(jnp.max(a, axis=-1), np.float32(127.0)).astype(jnp.float16)
    step = jnp.where(step > 0, step, jnp.float16(1.0))
    q = jnp.clip(jnp.rint(divide(y, step.astype(F32)[..., None])), -127, 127).astype(jnp.int8)
    return {
        hidden_name(layer): q,
        aux_name(layer, "rms"): r,
        aux_name(layer, "qstep"): step,
        aux_name(layer, "outlier_idx"): idx.astype(jnp.uint16),
        aux_name(layer, "outlier_val"): val.astype(jnp.float16),
    }


def compact_topk(ids_XxK, logprobs_XxK, vocab_size: int, packs_ids: bool = True) -> dict:
    """``topk_codecs.CompandedTopk.encode``: uint8 square-root companded code below the float32 top-1."""
    lp = jnp.minimum(logprobs_XxK.astype(F32), 0)
    top = lp[..., 0]
    finite = jnp.isfinite(lp) & jnp.isfinite(top)[..., None]
    delta = jnp.where(finite, top[..., None] - lp, F32(0.0))
    frac = divide(
        jnp.clip(delta, F32(0.0), F32(topk_codecs.LP_RANGE)), np.float32(topk_codecs.LP_RANGE)
    )
    code = jnp.rint(F32(254.0) * jnp.sqrt(frac))
    code = jnp.where(finite, code, F32(topk_codecs.LP_NEG_INF_CODE)).astype(jnp.uint8)
    return {
        topk_codecs.IDS: encode_ids(ids_XxK, vocab_size, packs_ids),
        topk_codecs.LOGPROBS: code,
        topk_codecs.TOP_LOGPROB: jnp.where(jnp.isfinite(top), top, -jnp.inf).astype(F32),
    }


# --- lean (store/lean.py) ----------------------------------------------------------------------------


def lean_hidden(layer: int, x_XxD: jax.Array, signs_D, lean_step: float) -> dict:
    """Lean activations: rotated, per-group 6-level codes packed 3 per byte (store/lean.py).

    Args:
        layer: the captured layer (array names).
        x_XxD: [..., D] activations.
        signs_D: the manifest's +-1 signs (length D).
        lean_step: the quantiser's step in units of the group RMS (LEAN_STEP).

    Returns:
        {hidden/<l>: uint8 [..., ceil(D/3)], hidden_aux/<l>/rms: float32 [...],
         hidden_aux/<l>/step: float16 [..., G]}.
    """
    D = x_XxD.shape[-1]
    b = store_lean.group_size(D)
    G = D // b
    lead = x_XxD.shape[:-1]
    x = x_XxD.astype(F32)
    r, safe = rms(x)
    y = divide(x, safe[..., None])
    v = (y * jnp.asarray(signs_D, F32)).reshape(*lead, G, b)
    rot = fwht(v) * np.float32(1.0 / np.sqrt(b))  # the scaling as store.lean writes it
    step = (jnp.sqrt(mean_square(rot)) * F32(lean_step)).astype(jnp.float16)
    step = jnp.where(step > 0, step, jnp.float16(1.0))
    code = jnp.clip(
        jnp.floor(divide(rot, step.astype(F32)[..., None])) + 3, 0, store_lean.LEVELS - 1
    )
    code = code.astype(jnp.uint8).reshape(*lead, D)
    code = jnp.pad(code, [(0, 0)] * len(lead) + [(0, -D % 3)]).reshape(*lead, -(-D // 3), 3)
    packed = code[..., 0] + jnp.uint8(6) * code[..., 1] + jnp.uint8(36) * code[..., 2]
    return {hidden_name(layer): packed, aux_name(layer, "rms"): r, aux_name(layer, "step"): step}


def lean_profile_hidden(layer: int, x_XxD: jax.Array) -> dict:
    """``hidden_codecs.LeanHidden.encode``: lean_hidden with store.lean's signs and step constant."""
    return lean_hidden(layer, x_XxD, store_lean.signs(x_XxD.shape[-1]), store_lean.LEAN_STEP)


# --- the profile's whole signal ----------------------------------------------------------------

# The jnp twins of the numpy codecs, keyed by the codec names (store/topk_codecs.py, store/hidden_codecs.py):
# a profile made of these codecs is encoded on the device with no change here.
TOPK_ENCODERS = {"float16": exact_topk, "uint8_companded": compact_topk}
HIDDEN_ENCODERS = {
    "float16_rms": exact_hidden,
    "int8_outliers": compact_hidden,
    "lean": lean_profile_hidden,
}


def _rows(signal) -> int:
    for name in ("topk_ids", "sampled_ids", "token_logprob"):
        if signal.get(name) is not None:
            return signal[name].shape[0]
    if signal.get("hidden"):
        return next(iter(signal["hidden"].values())).shape[0]
    raise ModelInputError("the signal has no top-k, sampled or hidden arrays: nothing to encode")


def _check(name, x, shape, kind):
    if x is None:
        raise ModelInputError(
            f"{name} is missing: this store has {list(shape)[2:]} of them per position; "
            "extract with the store's k, samples and layers"
        )
    ok = jnp.issubdtype(x.dtype, jnp.integer if kind == "integer" else jnp.floating)
    if not ok or tuple(x.shape) != tuple(shape):
        raise ModelInputError(
            f"{name} is {x.dtype}{list(x.shape)}, expected {kind} {list(shape)} [rows, seq_len, ...] "
            "of this store's schema; extract with the store's k, layers and seq_len"
        )


def encode_signal(signal: dict, schema, profile: profiles.Profile | None = None) -> dict:
    """Encodes one batch of the extraction step's outputs into the schema's stored arrays (jnp, jittable).

    Args:
        signal: {"topk_ids": int[B,T,K], "topk_logprobs": float[B,T,K] sorted descending,
            "hidden": {l: float[B,T,D]}} (extract.extract_signal's outputs), with
            "sampled_ids", "sampled_counts" int[B,T,S] and "sampled_logprobs" float[B,T,S]
            when the store has samples (store.sampled's contract; not re-checked here),
            and "token_logprob" float[B,T] when the store has it (stored as float32, <= 0).
            A store with k = 0 ignores the top-k arrays.
        schema: the store's ``store.StoreSchema``.
        profile: the store's ``store.profiles`` Profile (``profiles.for_store``: a compact
            store written before ids were bit-packed keeps plain ids); default: the
            schema's profile as written today.

    Returns:
        {"arrays": {stored array name: [B, ...]}, every array of the profile but ``tokens`` and
        ``loss_mask`` (the input's, not the teacher's: unit_signal adds it), in the
        profile's ArraySpec dtypes; "finite": bool[B], False for a row with a NaN/inf activation
        or log-prob (the host refuses it: ``host_arrays``)}.

    Raises:
        ModelInputError: an array of the wrong shape or dtype, missing or extra layers.
        store.StoreInputError: a profile without a device encoder.
    """
    profile = profile or profiles.get_profile(schema.profile)
    if profile.topk.name not in TOPK_ENCODERS or profile.hidden.name not in HIDDEN_ENCODERS:
        raise store_errors.StoreInputError(
            f"profile {schema.profile!r} ({profile.topk.name} top-k, {profile.hidden.name} hidden) has no device "
            f"encoder; device encoders exist for top-k {sorted(TOPK_ENCODERS)} and hidden "
            f"{sorted(HIDDEN_ENCODERS)}; or write with StoreWriter.write_unit (host encoder)"
        )
    encode_topk, encode_hidden = (
        TOPK_ENCODERS[profile.topk.name],
        HIDDEN_ENCODERS[profile.hidden.name],
    )
    T, K, S, D = schema.seq_len, schema.k, schema.samples, schema.hidden_dim
    B = _rows(signal)
    arrays, finite_B = {}, jnp.ones((B,), bool)
    if K:
        _check("topk_ids", signal["topk_ids"], (B, T, K), "integer")
        _check("topk_logprobs", signal["topk_logprobs"], (B, T, K), "floating")
        lp = signal["topk_logprobs"]
        finite_B &= ~jnp.isnan(lp).any(axis=(1, 2)) & ~jnp.isposinf(lp).any(axis=(1, 2))
        arrays.update(encode_topk(signal["topk_ids"], lp, schema.vocab_size, profile.packs_ids))
    if S:
        for name, kind in (
            ("sampled_ids", "integer"),
            ("sampled_counts", "integer"),
            ("sampled_logprobs", "floating"),
        ):
            _check(name, signal.get(name), (B, T, S), kind)
        # Empty slots hold -inf: only NaN and +inf are broken.
        lp = signal["sampled_logprobs"]
        finite_B &= ~jnp.isnan(lp).any(axis=(1, 2)) & ~jnp.isposinf(lp).any(axis=(1, 2))
        arrays.update(encode_sampled(signal, schema.vocab_size, profile.packs_ids))
    hidden = signal.get("hidden") or {}
    if sorted(hidden) != sorted(schema.hidden_layers):
        raise ModelInputError(
            f"hidden has the layers {sorted(hidden)}, the store {sorted(schema.hidden_layers)}; "
            "extract with layers=schema.hidden_layers"
        )
    for layer in schema.hidden_layers:
        _check(f"hidden[{layer}]", hidden[layer], (B, T, D), "floating")
        encoded = encode_hidden(layer, hidden[layer])
        # x has a NaN/inf iff its RMS does (or x**2 overflows float32: refused too).
        finite_B &= jnp.isfinite(encoded[aux_name(layer, "rms")]).all(axis=1)
        arrays.update(encoded)
    if schema.token_logprob:  # store/rollout.py: float32 <= 0, as its check_inputs stores it
        _check("token_logprob", signal.get("token_logprob"), (B, T), "floating")
        lp = signal["token_logprob"].astype(jnp.float32)
        finite_B &= jnp.isfinite(lp).all(axis=1)
        arrays[profiles.TOKEN_LOGPROB] = jnp.minimum(lp, jnp.float32(0.0))
    _check_specs(arrays, schema, profile, B)
    return {"arrays": arrays, "finite": finite_B}


def _check_specs(arrays, schema, profile, B):
    # Trace-time: the device encoders and store.profiles' ArraySpecs must agree (names, shapes, dtypes).
    specs = {
        s.name: s for s in profile.arrays(schema) if s.name not in ("tokens", profiles.LOSS_MASK)
    }
    got = {n: (tuple(a.shape), np.dtype(a.dtype).name) for n, a in arrays.items()}
    want = {n: ((B,) + tuple(s.inner_shape), np.dtype(s.dtype).name) for n, s in specs.items()}
    if got != want:
        raise store_errors.StoreInputError(
            f"device encoder of {schema.profile!r} disagrees with store.profiles: {got} vs {want}; "
            "update teacher_dump/encode.py with the profile"
        )


def make_encoded_extract_fn(
    extract_fn: Callable, schema, profile: profiles.Profile | None = None
) -> Callable:
    """The extraction step with the schema's encoder composed after it, one jit.

    Args:
        extract_fn: fn(params, tokens_BxT) -> signal (extract.make_extract_fn), jitted or not.
        schema: the store's schema.
        profile: the store's Profile (see encode_signal).

    Returns:
        fn(params, tokens_BxT[, rows_B]) -> encode_signal's {"arrays", "finite"}, jitted
        (cached per extract_fn, schema layout and profile); rows_B goes to extract_fn.
    """
    return _build(extract_fn, _Layout.of(schema), profile or profiles.get_profile(schema.profile))


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The schema fields an encoder depends on, hashable (StoreSchema holds dicts) for the jit cache."""

    profile: str
    seq_len: int
    k: int
    vocab_size: int
    hidden_layers: tuple
    hidden_dim: int
    samples: int
    loss_mask: bool
    token_logprob: bool

    @classmethod
    def of(cls, schema):
        return cls(**{f.name: getattr(schema, f.name) for f in dataclasses.fields(cls)})


@functools.lru_cache(maxsize=32)
def _build(extract_fn, layout, profile):
    @jax.jit
    def extract_encoded(
        params, tokens_BxT, *rows_B
    ):  # rows_B: the extraction step's optional row ids
        return encode_signal(extract_fn(params, tokens_BxT, *rows_B), layout, profile)

    return extract_encoded


def host_arrays(encoded: dict, first_row: int = 0) -> dict:
    """The numpy stored arrays of ``encode_signal``'s (fetched) output; refuses non-finite rows.

    Args:
        encoded: {"arrays": {name: numpy/jax array}, "finite": bool[B]}.
        first_row: store row of the batch's first row (for the message).

    Returns:
        {name: numpy array}, ready for ``StoreWriter.write_unit_encoded`` (plus "tokens").

    Raises:
        store.StoreInputError: a row has a NaN/inf activation or log-prob.
    """
    finite_B = np.asarray(encoded["finite"])
    if not finite_B.all():
        bad = first_row + int(np.flatnonzero(~finite_B)[0])
        raise store_errors.StoreInputError(
            f"row {bad}: the teacher signal has NaN/inf values; fix the teacher forward pass (check its dtype)"
        )
    return {name: np.asarray(a) for name, a in encoded["arrays"].items()}
