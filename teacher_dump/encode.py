"""The device encoder: the store profile's jnp codecs, run on the device after the extraction step.

``encode_signal(signal, schema)`` maps the extraction step's outputs
(``{"topk_ids", "topk_logprobs", "hidden": {l: ...}}``, extract.py) to the
stored arrays of the schema's profile (``store.profiles``), ``{array name:
[B, ...]}``, inside jit. Composed after the extraction step
(``make_encoded_extract_fn``), the device→host copy carries only the encoded
bytes (compact: 2.98 KB/token before zstd at T=2048, k=128, D=2560 instead of
11.3 KB of float32 signal) and the host only writes them
(``StoreWriter.write_unit_encoded``). Ids are bit-packed as the profile
packs them (``bitpack.pack_jnp``: integer ops, exact on any backend).

This module only dispatches: each codec's jnp encoder sits beside its numpy
encoder in the store package (``encode_jnp`` of store/topk_codecs.py,
store/hidden_codecs.py, store/lean.py, store/sampled.py, ids in
store/bitpack.py), handed encode_ops.py, the jnp twins of numpy's float
arithmetic bit for bit (the store never imports JAX). Byte-identical to the
numpy encoders on CPU (tested), tied compact outliers (host and device: ties
to the lower channel, store/topn.py) and lean steps (both: numpy's float32
pairwise mean of squares, store/lean.py) included.

A resume re-runs the same encoder, so it rewrites the same bytes either way.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from store import errors as store_errors
from store import profiles, sampled
from store.hidden_codecs import aux_name
from teacher_dump import encode_ops
from trainer.model.errors import ModelInputError


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
    for family, codec in (("top-k", profile.topk), ("hidden", profile.hidden)):
        if not callable(getattr(codec, "encode_jnp", None)):
            raise store_errors.StoreInputError(
                f"profile {schema.profile!r}: its {codec.name} {family} codec has no device encoder "
                "(encode_jnp beside its numpy encode); add it, or write with StoreWriter.write_unit "
                "(host encoder)"
            )
    T, K, S, D = schema.seq_len, schema.k, schema.samples, schema.hidden_dim
    B = _rows(signal)
    arrays, finite_B = {}, jnp.ones((B,), bool)
    if K:
        _check("topk_ids", signal["topk_ids"], (B, T, K), "integer")
        _check("topk_logprobs", signal["topk_logprobs"], (B, T, K), "floating")
        lp = signal["topk_logprobs"]
        finite_B &= ~jnp.isnan(lp).any(axis=(1, 2)) & ~jnp.isposinf(lp).any(axis=(1, 2))
        arrays.update(
            profile.topk.encode_jnp(encode_ops, profile, signal["topk_ids"], lp, schema.vocab_size)
        )
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
        arrays.update(
            sampled.encode_jnp(
                encode_ops,
                profile,
                signal["sampled_ids"],
                signal["sampled_counts"],
                lp,
                schema.vocab_size,
            )
        )
    hidden = signal.get("hidden") or {}
    if sorted(hidden) != sorted(schema.hidden_layers):
        raise ModelInputError(
            f"hidden has the layers {sorted(hidden)}, the store {sorted(schema.hidden_layers)}; "
            "extract with layers=schema.hidden_layers"
        )
    for layer in schema.hidden_layers:
        _check(f"hidden[{layer}]", hidden[layer], (B, T, D), "floating")
        encoded = profile.hidden.encode_jnp(encode_ops, layer, hidden[layer])
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
            "fix the codec's encode_jnp (store/*_codecs.py) to write its specs"
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
