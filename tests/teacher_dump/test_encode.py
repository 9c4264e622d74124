"""Device encoders (the codecs' encode_jnp, dispatched by teacher_dump/encode.py) against their numpy encoders.

Agreement is byte-for-byte (the stated tolerance is zero), tied |y| included:
host and device both take the n largest |y| with ties to the lower channel
(store/topn.py), checked against an independent stable-argsort reference.
"""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from store import (
    StoreInputError,
    StoreSchema,
    bitpack,
    hidden_codecs,
    profiles,
    sampled,
    topk_codecs,
)
from store import (
    lean as store_lean,
)
from teacher_dump import encode, encode_ops, extract
from teacher_dump import teacher as teacher_lib
from trainer.model import model_config
from trainer.model.errors import ModelInputError


def _hidden(rng, rows, T, D):
    """Residual-stream-like activations: heavy tails, per-channel scales, a few massive channels."""
    x = rng.standard_t(4, (rows, T, D)) * np.exp(rng.normal(0, 0.5, D)) * 150
    x[..., rng.choice(D, min(3, D), replace=False)] += 8000
    return x.astype(np.float32)


def _topk(rng, rows, T, K, V):
    logits = rng.normal(0, 3, (rows, T, V)).astype(np.float64)
    lse = np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logits, axis=-1, kind="stable")[..., :K]
    lp = (np.take_along_axis(logits, ids, -1) - lse).astype(np.float32)
    lp[0, 0, K // 2 :] = -np.inf  # a top-p truncated position: dropped slots
    ids[0, 0, K // 2 :] = 0
    return ids.astype(np.int32), lp


def _device(fn, *args):
    return jax.tree_util.tree_map(np.array, jax.jit(fn)(*args))  # writable copies


def _assert_same_bytes(got, ref):
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        assert got[name].shape == ref[name].shape, name
        assert got[name].tobytes() == ref[name].tobytes(), (
            f"{name}: {np.mean(got[name] != ref[name])} differ"
        )


def _hidden_jnp(codec, layer, x):
    """A hidden codec's device encoder (its encode_jnp, handed encode_ops as teacher_dump.encode does)."""
    return hidden_codecs.CODECS[codec].encode_jnp(encode_ops, layer, x)


@pytest.mark.parametrize("D", [2560, 1, 7, 100, 1000, 2049, 3072])
def test_pairwise_sum_is_numpys_sum_bit_for_bit(D):
    # 2560 (32 leaves of 80) and 3072 take the side-by-side path; 100, 1000, 2049 the unequal tree.
    x = np.random.default_rng(D).standard_t(4, (33, D)).astype(np.float32) * 150
    got = _device(lambda x: encode_ops.pairwise_sum(x), x)
    np.testing.assert_array_equal(got, np.add.reduce(x, axis=-1, dtype=np.float32))
    got_rms = _device(lambda x: encode_ops.rms(x)[0], x)
    np.testing.assert_array_equal(got_rms, hidden_codecs.rms(x)[0])


@pytest.mark.parametrize("D", [2560, 96, 5])
def test_compact_hidden_is_byte_identical_to_numpy(D):
    x = _hidden(np.random.default_rng(1), 2, 24, D)
    x[1, 3] = 0.0  # a zero token: rms 0, step 1, every channel ties
    got = _device(lambda x: _hidden_jnp("int8_outliers", 4, x), x)
    ref = profiles.get_profile("compact").encode_hidden(4, x)
    np.testing.assert_array_equal(
        got[profiles.aux_name(4, "outlier_idx")][1, 3], np.arange(min(8, D))
    )
    _assert_same_bytes(got, ref)


def test_exact_hidden_is_byte_identical_to_numpy():
    x = _hidden(np.random.default_rng(2), 2, 16, 2560)
    _assert_same_bytes(
        _device(lambda x: _hidden_jnp("float16_rms", 3, x), x),
        profiles.get_profile("exact").encode_hidden(3, x),
    )


@pytest.mark.parametrize(
    "profile, V", [("compact", 300), ("exact", 300), ("compact", 70000), ("exact", 70000)]
)
def test_topk_is_byte_identical_to_numpy(profile, V):
    ids, lp = _topk(np.random.default_rng(3), 2, 8, 16, V)
    lp[1, 2, 0] = 0.0  # probability 1 at the top
    prof = profiles.get_profile(profile)
    got = _device(lambda i, l: prof.topk.encode_jnp(encode_ops, prof, i, l, V), ids, lp)
    _assert_same_bytes(got, prof.encode_topk(ids, lp, V))


@pytest.mark.parametrize("D", [256, 2560, 100])
def test_tied_outliers_take_the_lower_channel_byte_identical_to_numpy(D):
    # bfloat16-valued activations (a bf16 teacher): |y| ties at the n-th value on ~1% of tokens
    # (e12 measured); 256 and 2560 take store.topn's block path, 100 its full-row fallback.
    rng = np.random.default_rng(4)
    x = np.array(jnp.asarray(_hidden(rng, 1, 512, D)).astype(jnp.bfloat16).astype(jnp.float32))
    x[0, :8, 10:22] = 2e4  # 12 equal largest channels: the top 8 is a tie
    x[0, 8] = 0.0  # all channels tie
    got = _device(lambda x: _hidden_jnp("int8_outliers", 1, x), x)
    ref = profiles.get_profile("compact").encode_hidden(1, x)
    y = x / hidden_codecs.rms(x)[1][..., None]
    a = np.abs(y)
    srt = -np.sort(-a, axis=-1)
    assert (
        srt[..., 7] == srt[..., 8]
    ).sum() >= 10  # the tie path is exercised beyond the planted rows
    want_idx = np.sort(np.argsort(-a, axis=-1, kind="stable")[..., :8], axis=-1)
    np.testing.assert_array_equal(got[profiles.aux_name(1, "outlier_idx")], want_idx)
    np.testing.assert_array_equal(want_idx[0, :8], np.broadcast_to(np.arange(10, 18), (8, 8)))
    _assert_same_bytes(got, ref)


def test_decode_of_device_encoding_is_faithful():
    rng = np.random.default_rng(5)
    x = _hidden(rng, 1, 64, 512).astype(np.float64)
    got = _device(lambda x: _hidden_jnp("int8_outliers", 2, x), x.astype(np.float32))
    x_hat = profiles.get_profile("compact").decode_hidden(2, got, np.float64)
    cos = (x_hat * x).sum(-1) / np.linalg.norm(x_hat, axis=-1) / np.linalg.norm(x, axis=-1)
    assert cos.min() > 0.9995
    ids, lp = _topk(rng, 1, 8, 32, 500)
    compact = profiles.get_profile("compact")
    enc = _device(lambda i, l: compact.topk.encode_jnp(encode_ops, compact, i, l, 500), ids, lp)
    code = enc["topk/logprobs"].astype(np.float64)
    delta = np.minimum(lp[..., :1].astype(np.float64) - lp, topk_codecs.LP_RANGE)
    finite = np.isfinite(lp)
    # Half a code of the sqrt-companded scale: |254 sqrt(delta / 32) - code| <= 0.5.
    assert np.all(
        np.abs(254 * np.sqrt(delta[finite] / topk_codecs.LP_RANGE) - code[finite]) <= 0.5 + 1e-4
    )
    assert np.all(code[~finite] == topk_codecs.LP_NEG_INF_CODE)


@pytest.mark.parametrize("V", [2, 2048, 32000, 262144])
def test_packed_ids_decode_with_numpy_unpackbits(V):
    bits = max(1, int(np.ceil(np.log2(V))))
    ids = np.random.default_rng(V).integers(0, V, (3, 5, 13), dtype=np.int64)
    ids[0, 0, :] = V - 1
    packed = _device(lambda i: bitpack.pack_jnp(jnp, i, bits), ids.astype(np.int32))
    assert packed.dtype == np.uint8 and packed.shape == (3, 5, -(-13 * bits // 8))
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : 13 * bits].reshape(
        3, 5, 13, bits
    )
    decoded = (stream.astype(np.int64) << np.arange(bits)).sum(-1)
    np.testing.assert_array_equal(decoded, ids)


def _schema(profile, D=64, layers=(1,), k=8, V=256, T=16, samples=0):
    return StoreSchema(
        seq_len=T,
        k=k,
        vocab_size=V,
        hidden_layers=layers,
        hidden_dim=D,
        profile=profile,
        rows_per_unit=4,
        samples=samples,
    )


def _sampled(rng, B, T, S, V):
    """S draws per position as distinct ascending ids + counts, empty slots last (store.sampled's contract)."""
    ids = np.zeros((B, T, S), np.int32)
    counts = np.zeros((B, T, S), np.int32)
    lp = np.full((B, T, S), -np.inf, np.float32)
    for b in range(B):
        for t in range(T):
            u, c = np.unique(rng.integers(0, min(V, 3 * S), S), return_counts=True)
            ids[b, t, : len(u)], counts[b, t, : len(u)] = u, c
            lp[b, t, : len(u)] = -rng.exponential(2.0, len(u))
    return ids, counts, lp


def _signal(rng, B=2, T=16, K=8, V=256, D=64, layers=(1,), S=0):
    ids, lp = _topk(rng, B, T, K, V)
    signal = {
        "topk_ids": ids,
        "topk_logprobs": lp,
        "hidden": {l: _hidden(rng, B, T, D) for l in layers},
    }
    if S:
        signal["sampled_ids"], signal["sampled_counts"], signal["sampled_logprobs"] = _sampled(
            rng, B, T, S, V
        )
    return signal


@pytest.mark.parametrize(
    "profile, S", [("exact", 0), ("compact", 0), ("exact", 5), ("compact", 12)]
)
def test_encode_signal_gives_the_profiles_arrays_deterministically(profile, S):
    schema = _schema(profile, layers=(1, 2), samples=S)
    signal = _signal(np.random.default_rng(6), layers=(1, 2), S=S)
    fn = jax.jit(lambda s: encode.encode_signal(s, schema))
    first = encode.host_arrays(jax.tree_util.tree_map(np.asarray, fn(signal)))
    again = encode.host_arrays(fn(signal))
    one_row = encode.host_arrays(
        fn(jax.tree_util.tree_map(lambda a: a[1:], signal))
    )  # batch-independent
    prof = profiles.get_profile(profile)
    ref = dict(prof.encode_topk(signal["topk_ids"], signal["topk_logprobs"], 256))
    for l in (1, 2):
        ref.update(prof.encode_hidden(l, signal["hidden"][l]))
    if S:
        ref.update(
            sampled.encode(
                prof,
                signal["sampled_ids"],
                signal["sampled_counts"],
                signal["sampled_logprobs"],
                256,
            )
        )
    _assert_same_bytes(first, ref)
    _assert_same_bytes(again, ref)
    _assert_same_bytes(one_row, {n: a[1:] for n, a in ref.items()})


def test_a_compact_store_written_before_id_packing_gets_plain_ids():
    schema = _schema("compact", samples=3)
    legacy = profiles.for_store(schema, {"encodings": {}})  # a manifest without ids_bits
    assert not legacy.packs_ids
    signal = _signal(np.random.default_rng(11), S=3)
    got = encode.host_arrays(jax.jit(lambda s: encode.encode_signal(s, schema, legacy))(signal))
    assert got["topk/ids"].dtype == np.uint16 and got[sampled.IDS].dtype == np.uint16
    np.testing.assert_array_equal(got["topk/ids"], signal["topk_ids"])
    np.testing.assert_array_equal(got[sampled.IDS], signal["sampled_ids"])


def test_wrong_shapes_dtypes_and_layers_are_refused():
    schema = _schema("compact")
    signal = _signal(np.random.default_rng(7))
    bad = [
        ({**signal, "topk_ids": signal["topk_ids"].astype(np.float32)}, "topk_ids is float32"),
        ({**signal, "topk_logprobs": signal["topk_logprobs"][:, :, :4]}, "expected floating"),
        ({**signal, "hidden": {1: signal["hidden"][1][..., :32]}}, r"hidden\[1\]"),
        ({**signal, "hidden": {2: signal["hidden"][1]}}, "layers"),
        ({**signal, "hidden": {1: signal["hidden"][1].astype(np.int32)}}, "expected floating"),
        ({**signal, "hidden": {}, "topk_ids": None, "topk_logprobs": None}, "nothing to encode"),
    ]
    for sig, message in bad:
        with pytest.raises(ModelInputError, match=message):
            encode.encode_signal(sig, schema)
    with pytest.raises(ModelInputError, match="sampled_ids is missing"):
        encode.encode_signal(signal, _schema("compact", samples=4))
    with pytest.raises(StoreInputError, match="unknown precision profile 'x'"):
        # A stand-in schema: StoreSchema itself refuses an unknown profile.
        encode.encode_signal(
            signal, types.SimpleNamespace(**{**dataclasses.asdict(schema), "profile": "x"})
        )


def test_non_finite_rows_are_refused_on_the_host():
    schema = _schema("compact", samples=4)
    for poison in ("hidden", "topk_logprobs", "sampled_logprobs"):
        signal = _signal(np.random.default_rng(8), S=4)
        if poison == "hidden":
            signal["hidden"][1][1, 3, 5] = np.inf
        else:
            signal[poison][1, 2, 0] = np.nan
        out = jax.jit(lambda s: encode.encode_signal(s, schema))(signal)
        with pytest.raises(StoreInputError, match="row 41: the teacher signal has NaN/inf"):
            encode.host_arrays(out, first_row=40)


def test_encoded_extraction_step_matches_host_encoding_of_the_extraction(make_params):
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = make_params(cfg, 9)
    schema = _schema("compact", D=cfg.d_model, layers=(1,), k=8, V=256, T=16)
    fn = extract.make_extract_fn(cfg, k=8, layers=(1,))
    tokens = np.random.default_rng(9).integers(0, 256, (2, 16), dtype=np.int32)
    got = encode.host_arrays(encode.make_encoded_extract_fn(fn, schema)(params, tokens))
    assert encode.make_encoded_extract_fn(fn, schema) is encode.make_encoded_extract_fn(fn, schema)
    signal = jax.tree_util.tree_map(np.asarray, fn(params, tokens))
    prof = profiles.get_profile("compact")
    ref = dict(prof.encode_topk(signal["topk_ids"], signal["topk_logprobs"], 256))
    ref.update(prof.encode_hidden(1, signal["hidden"][1]))
    _assert_same_bytes(got, ref)


def _sylvester(b):
    H = np.ones((1, 1))
    while H.shape[0] < b:
        H = np.block([[H, H], [H, -H]])
    return H


@pytest.mark.parametrize("D, b", [(2560, 512), (96, 32), (7, 1), (4096, 512)])
def test_lean_block_and_fwht_match_the_hadamard_matmul(D, b):
    assert store_lean.group_size(D) == b
    v = np.random.default_rng(D).normal(size=(3, D // b, b)).astype(np.float32)
    got = _device(encode_ops.fwht, v)
    np.testing.assert_allclose(got, v.astype(np.float64) @ _sylvester(b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("D", [1536, 1024])
def test_lean_codes_match_a_float64_reference_except_on_code_boundaries(D):
    # 1024: D % 3 = 1, the last byte carries padding codes 0. Reference in float64 with a
    # matmul rotation (store/lean.py); the device rounds in float32, so a code
    # may differ only where r / step is within 1e-4 of an integer (a code boundary).
    rng = np.random.default_rng(10)
    lean_step = 0.7309
    x = _hidden(rng, 1, 128, D)
    signs = np.where(rng.random(D) < 0.5, -1.0, 1.0)
    names = (profiles.hidden_name(2), profiles.aux_name(2, "rms"), profiles.aux_name(2, "step"))
    got = _device(
        lambda x: dict(zip(names, store_lean.encode_jnp(encode_ops, x, signs, lean_step))), x
    )
    b = store_lean.group_size(D)
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt((x64**2).mean(-1, keepdims=True))
    rot = ((y * signs).reshape(1, 128, -1, b) @ _sylvester(b)) / np.sqrt(b)
    step = got[profiles.aux_name(2, "step")].astype(np.float64)
    ulp = np.spacing(np.float16(np.sqrt((rot**2).mean(-1)) * lean_step)).astype(np.float64)
    assert np.all(np.abs(step - np.sqrt((rot**2).mean(-1)) * lean_step) <= ulp)
    ratio = rot / step[..., None]
    want = np.clip(np.floor(ratio) + 3, 0, 5).reshape(1, 128, D)
    packed = got[profiles.hidden_name(2)].astype(np.int64)
    assert packed.shape == (1, 128, -(-D // 3)) and packed.max() <= 215
    codes = np.stack([(packed // 6**j) % 6 for j in range(3)], -1).reshape(1, 128, -1)
    assert np.all(codes[..., D:] == 0)
    codes = codes[..., :D]
    near = (np.abs(ratio - np.rint(ratio)) < 1e-4).reshape(1, 128, D)
    assert np.all((codes == want) | near)
    # Decode (store/lean.py) is faithful: cosine to x above 0.95 on every token.
    r_hat = (codes.reshape(1, 128, -1, b) - 2.5) * step[..., None]
    x_hat = (
        ((r_hat @ _sylvester(b)) / np.sqrt(b)).reshape(1, 128, D)
        * signs
        * got[profiles.aux_name(2, "rms")][..., None]
    )
    cos = (x_hat * x64).sum(-1) / np.linalg.norm(x_hat, axis=-1) / np.linalg.norm(x64, axis=-1)
    assert cos.min() > 0.95


@pytest.mark.parametrize("D", [512, 2560, 48])
def test_lean_profile_is_byte_identical_to_the_numpy_lean_encoder(D):
    # Both take the group's mean of squares as numpy's float32 pairwise sum (store.lean step 3), so
    # steps and codes agree bit for bit; bf16-valued activations included (ties, coarse values).
    rng = np.random.default_rng(12)
    schema = _schema("lean", D=D, layers=(1,), samples=4, T=64)
    signal = _signal(rng, B=2, T=64, D=D, S=4)
    signal["hidden"][1][1] = np.array(
        jnp.asarray(signal["hidden"][1][1]).astype(jnp.bfloat16).astype(jnp.float32)
    )
    signal["hidden"][1][0, 5] = 0.0  # a zero token: steps 1
    got = encode.host_arrays(jax.jit(lambda s: encode.encode_signal(s, schema))(signal))
    prof = profiles.get_profile("lean")
    ref = dict(prof.encode_topk(signal["topk_ids"], signal["topk_logprobs"], 256))
    ref.update(
        sampled.encode(
            prof, signal["sampled_ids"], signal["sampled_counts"], signal["sampled_logprobs"], 256
        )
    )
    ref.update(prof.encode_hidden(1, signal["hidden"][1]))
    _assert_same_bytes(got, ref)


def test_lean_steps_are_byte_identical_on_many_groups():
    # 150,000 groups of 16 (D = 48): a float64 mean of squares (store.lean's rule before) rounds 10 of
    # these steps to the other float16 (asserted below, so this test keeps telling the rules apart).
    x = _hidden(np.random.default_rng(1), 1, 50000, 48)
    got = _device(lambda x: _hidden_jnp("lean", 1, x), x)
    ref = profiles.get_profile("lean").encode_hidden(1, x)
    _assert_same_bytes(got, ref)
    y = x[0] / hidden_codecs.rms(x[0])[1][:, None]
    r = store_lean.hadamard_rotate((y * store_lean.signs(48)).reshape(-1, 3, 16))
    f64 = (np.sqrt(np.mean(np.square(r, dtype=np.float64), -1)) * store_lean.LEAN_STEP).astype(
        np.float16
    )
    assert (f64 != ref[profiles.aux_name(1, "step")][0]).sum() >= 5


def test_encoding_over_four_devices_matches_the_host_encoding_of_their_signal(tiny_ckpt):
    # The batch is split over a data mesh; the encoder is per row, so each device encodes its rows.
    if len(jax.local_devices()) < 4:
        pytest.skip("needs 4 (simulated) devices")
    four = teacher_lib.load_teacher(tiny_ckpt[0], devices=teacher_lib.local_devices(4))
    cfg = four.cfg
    schema = _schema("compact", D=cfg.d_model, layers=(1,), k=8, V=cfg.vocab_size, T=16)
    tokens = np.random.default_rng(13).integers(0, cfg.vocab_size, (10, 16), dtype=np.int32)
    got = encode.host_arrays(
        four.extract(tokens, batch_size=8, k=8, layers=(1,), encode_for=schema)
    )
    signal = four.extract(tokens, batch_size=8, k=8, layers=(1,))
    prof = profiles.get_profile("compact")
    ref = dict(prof.encode_topk(signal["topk_ids"], signal["topk_logprobs"], cfg.vocab_size))
    ref.update(prof.encode_hidden(1, signal["hidden"][1]))
    _assert_same_bytes(got, ref)
