"""trainer.training.decode and the codecs' jnp decoders: the device decode equals the numpy decoders.

Bitwise everywhere (assert_array_equal): casts, int8 * float16 step with the
outliers restored, the uint8 log-prob code (a table of the same float32 ops),
packed ids (integers), lean's inverse Hadamard (an integer matmul, exact; see
store.lean.decode_jnp). References: store.profiles' numpy decoders on the same
stored bytes, np.packbits for the bit stream, a float64 formula for lean.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from store import StoreReader, StoreSchema, bitpack, create_store, lean, profiles
from trainer.model.errors import ConfigError
from trainer.training import data, decode, methods, sharding
from trainer.training import loop as train


def _pack_ref(ids, bits):
    """store.profiles.PACKED_IDS_RULE by np.packbits: value j at stream bits [j*bits, (j+1)*bits), little-endian."""
    bit = ((ids[..., None].astype(np.int64) >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bit.reshape(ids.shape[:-1] + (-1,)), axis=-1, bitorder="little")


@pytest.mark.parametrize(
    "vocab, n", [(2, 3), (5, 7), (2048, 12), (32000, 128), (262144, 12), (262144, 128), (2**31, 5)]
)
def test_unpack_ids_matches_packbits(vocab, n):
    bits = max(1, math.ceil(math.log2(vocab)))
    rng = np.random.default_rng(vocab)
    ids = rng.integers(0, vocab, (2, 3, n), dtype=np.int64)
    ids[0, 0, -1] = vocab - 1  # the largest id, all bits set
    packed = _pack_ref(ids, bits)
    assert packed.shape[-1] == -(-n * bits // 8)
    got = jax.jit(lambda p: bitpack.unpack_jnp(jnp, p, n, bits))(packed)
    np.testing.assert_array_equal(np.asarray(got), ids)


def test_unpack_ids_refuses_a_wrong_width():
    with pytest.raises(ValueError, match="need 3"):
        bitpack.unpack_jnp(jnp, np.zeros((1, 2), np.uint8), 2, 11)


def test_unknown_profile_and_field_are_refused():
    with pytest.raises(ValueError, match="'float8' is unknown"):
        decode.Encoding(profile="float8")
    with pytest.raises(ValueError, match="unknown store field 'logits'"):
        decode.BatchSpec(encoding=decode.EXACT, fields=("tokens", "logits"))


def _need(profile):
    if profile not in profiles.PROFILES:
        pytest.skip(f"store has no {profile} profile yet")


@pytest.fixture(scope="module", params=["exact", "compact", "lean"])
def store(request, tmp_path_factory):
    _need(request.param)
    return tl.make_store(
        tmp_path_factory.mktemp(request.param) / "s", num_rows=32, profile=request.param
    )


def test_loader_ships_stored_arrays_and_device_decode_is_bitwise(store):
    """The loader batch is the stored bytes (no host decode); decoded in jit it equals
    StoreReader.read's numpy decode (normalized activations, float32, int32 ids)."""
    source = data.StoreSource(store, ("tokens", "topk", f"hidden/{tl.LAYER}"))
    reader = StoreReader(store)
    rows = np.array([3, 4, 5, 9])
    batch = source.read_indices(rows)
    names = source.stored_names()
    stored = reader.read_stored(rows, names)
    assert set(batch) == set(
        names
    )  # one vocabulary: the stored names, from the manifest to the step
    for name in names:
        np.testing.assert_array_equal(batch[name], stored[name])
        assert batch[name].dtype == stored[name].dtype, name
    if reader.schema.profile == "compact":
        assert (
            batch[f"hidden/{tl.LAYER}"].dtype == np.int8
            and batch["topk/logprobs"].dtype == np.uint8
        )
        # Bit-packed ids: 9 bits each at V=512.
        assert batch["topk/ids"].dtype == np.uint8 and batch["topk/ids"].shape[-1] == -(
            -tl.K * 9 // 8
        )
    spec = source.spec
    assert spec.ndims == {k: v.ndim for k, v in batch.items()}
    got = jax.device_get(jax.jit(lambda b: decode.decode_batch(b, spec))(batch))
    want = reader.read(rows, hidden_normalized=True)  # numpy: float32, int32 ids
    np.testing.assert_array_equal(got.tokens, want["tokens"])
    np.testing.assert_array_equal(got.topk.ids, want["topk_ids"])
    np.testing.assert_array_equal(got.topk.logprobs, want["topk_logprobs"])
    np.testing.assert_array_equal(got.hidden, want[f"hidden/{tl.LAYER}"])
    assert got.topk.ids.dtype == np.int32 and got.hidden.dtype == np.float32
    assert got.sampled is None
    assert np.isneginf(got.topk.logprobs).sum() == np.isneginf(want["topk_logprobs"]).sum()


def test_a_phase_reads_only_what_it_needs(store):
    nll = data.StoreSource(store, ("tokens",))
    assert nll.stored_names() == ["tokens"]
    hld = data.StoreSource(store, ("tokens", f"hidden/{tl.LAYER}")).stored_names()
    assert not any("topk" in n or n.endswith("/rms") for n in hld)


def test_a_field_the_store_lacks_is_one_clear_error(tmp_path):
    tokens_only = tl.make_store(tmp_path / "t", num_rows=8, k=0, layers=(), profile="compact")
    with pytest.raises(
        ConfigError, match=r"unknown field 'topk'.*read only fields the store holds"
    ):
        data.StoreSource(tokens_only, ("tokens", "topk")).read_indices([0])


def _sampled_store(path, profile, S=6, vocab=512, T=16, rows=8):
    """A store with S draws per position from a random softmax (distinct ids ascending, counts)."""
    rng = np.random.default_rng(7)
    schema = StoreSchema(
        seq_len=T,
        k=0,
        vocab_size=vocab,
        samples=S,
        rows_per_unit=4,
        profile=profile,
        tokenizer={"sha256": "ab" * 32},
        teacher={"name": "t"},
        packing={"rule": "noam"},
    )
    writer = create_store(str(path), schema, num_rows=rows)
    for u in range(writer.num_units):
        a, b = writer.unit_rows(u)
        logits = rng.normal(size=(b - a, T, vocab)) * 3
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ids = np.zeros((b - a, T, S), np.int32)
        counts = np.zeros((b - a, T, S), np.uint8)
        for i in np.ndindex(b - a, T):
            draws = rng.choice(vocab, S, p=np.exp(logp[i]))
            uniq, cnt = np.unique(draws, return_counts=True)
            ids[i][: len(uniq)], counts[i][: len(uniq)] = uniq, cnt
        lp = np.where(counts > 0, np.take_along_axis(logp, ids, -1), -np.inf).astype(np.float32)
        writer.write_unit(
            u,
            tokens=rng.integers(0, vocab, (b - a, T), dtype=np.int32),
            sampled_ids=ids,
            sampled_counts=counts,
            sampled_logprobs=lp,
        )
    return str(path)


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_sampled_arrays_decode_bitwise(tmp_path, profile):
    url = _sampled_store(tmp_path / "s", profile)
    source = data.StoreSource(url, ("tokens", "sampled"))
    rows = np.array([1, 2, 6])
    batch = source.read_indices(rows)
    assert set(batch) == {"tokens", "sampled/ids", "sampled/counts", "sampled/logprobs"}
    spec = source.spec
    got = jax.device_get(jax.jit(lambda b: decode.decode_batch(b, spec))(batch)).sampled
    want = StoreReader(url).read(rows, fields=("tokens", "sampled"))
    for key in ("ids", "counts", "logprobs"):
        np.testing.assert_array_equal(getattr(got, key), want[f"sampled_{key}"], err_msg=key)
    assert got.counts.sum(-1).min() == 6


@pytest.mark.parametrize("profile", ["compact", "lean"])
def test_packed_ids_at_gemma_vocab_match_the_store_decoder(tmp_path, profile):
    """V=262,144 (18-bit ids): top-k and sampled ids written by the store's encoder,
    unpacked in jit, equal StoreReader.read's numpy unpack."""
    _need(profile)
    V, T, K, S = 262144, 8, 12, 6
    rng = np.random.default_rng(3)
    schema = StoreSchema(
        seq_len=T,
        k=K,
        vocab_size=V,
        samples=S,
        rows_per_unit=2,
        profile=profile,
        tokenizer={"sha256": "ab" * 32},
        teacher={"name": "t"},
        packing={"rule": "noam"},
    )
    writer = create_store(str(tmp_path / "s"), schema, num_rows=4)
    for u in range(writer.num_units):
        ids = np.stack([rng.choice(V, K, replace=False) for _ in range(2 * T)]).reshape(2, T, K)
        lp = np.sort(rng.uniform(-20, 0, (2, T, K)), -1)[..., ::-1].astype(np.float32)
        sids = np.sort(
            np.stack([rng.choice(V, S, replace=False) for _ in range(2 * T)]), -1
        ).reshape(2, T, S)
        counts = np.ones((2, T, S), np.uint8)
        writer.write_unit(
            u,
            tokens=np.zeros((2, T), np.int32),
            topk_ids=ids,
            topk_logprobs=lp,
            sampled_ids=sids,
            sampled_counts=counts,
            sampled_logprobs=np.full((2, T, S), -3.0, np.float32),
        )
    source = data.StoreSource(str(tmp_path / "s"), ("tokens", "topk", "sampled"))
    assert source.encoding.ids_bits == 18
    batch = source.read_indices(np.arange(4))
    assert batch["topk/ids"].shape == (4, T, 27) and batch["sampled/ids"].shape == (4, T, 14)
    got = jax.device_get(jax.jit(lambda b: decode.decode_batch(b, source.spec))(batch))
    want = StoreReader(str(tmp_path / "s")).read(np.arange(4), fields=("topk", "sampled"))
    for key in ("topk_ids", "topk_logprobs", "sampled_ids", "sampled_counts", "sampled_logprobs"):
        signal, attr = key.split("_")
        np.testing.assert_array_equal(getattr(getattr(got, signal), attr), want[key], err_msg=key)
    assert got.topk.ids.max() >= V // 2  # the high bits are exercised


def _lean_reference(packed, step, signs):
    """store/lean.py decode in float64 numpy with an explicit Sylvester matrix."""
    D = len(signs)
    b = min(D & -D, 512)
    c = np.stack([(packed // 6**j) % 6 for j in range(3)], -1).reshape(packed.shape[:-1] + (-1,))[
        ..., :D
    ]
    r = (c - 2.5).reshape(c.shape[:-1] + (D // b, b)) * step.astype(np.float64)[..., None]
    H = np.array([[1.0]])
    while H.shape[0] < b:
        H = np.block([[H, H], [H, -H]])
    assert (H == lean.sylvester(b)).all()
    y = (r @ H) / np.sqrt(b)
    return y.reshape(y.shape[:-2] + (D,)) * np.asarray(signs, np.float64)


@pytest.mark.parametrize("D", [96, 2560])
def test_lean_hidden_matches_the_spec_and_the_store_decoder(D):
    """Float32 decode: bitwise store.lean.decode (numpy), and vs the float64 spec formula
    within the 2 float32 roundings of the final scale by float32(1/sqrt(b))
    (everything before it is exact)."""
    _need("lean")
    rng = np.random.default_rng(D)
    G = D // lean.group_size(D)
    packed = rng.integers(0, 216, (2, 3, -(-D // 3)), dtype=np.int64).astype(np.uint8)
    step = rng.uniform(0.01, 2.0, (2, 3, G)).astype(np.float16)
    signs = tuple(int(s) for s in lean.signs(D))
    got = np.asarray(jax.jit(lambda p, s: lean.decode_jnp(jnp, p, s, signs))(packed, step))
    np.testing.assert_array_equal(got, lean.decode(packed, step, D, np.float32))
    want = _lean_reference(packed.astype(np.int64), step, signs)
    np.testing.assert_allclose(got, want, rtol=2**-22, atol=0)


@pytest.mark.parametrize(
    "profile, devices",
    [
        ("compact", 1),
        pytest.param("compact", 2, marks=pytest.mark.slow),
        pytest.param("lean", 1, marks=pytest.mark.slow),
    ],
)
def test_training_on_coded_stores_gives_the_host_decode_losses(tmp_path, profile, devices):
    """HLDC on a compact (lean) store: stored arrays decoded in the step (on 1 device, or
    sharded over 2) give the losses of the host-decoded float32 batches (1 device)."""
    _need(profile)
    store = tl.make_store(tmp_path / "c", num_rows=32, profile=profile)
    config = tl.tiny_config("hldc", store, tmp_path / "run")
    model_cfg = train.model_config_from(config)
    phase = methods.phases(config, model_cfg.num_layers)[0]
    plan = train.PhasePlan(
        phase=phase,
        num_steps=20,
        flops_per_token=train.phase_flops_per_token(config, model_cfg, phase),
    )
    source = data.StoreSource(store, phase.fields)
    reader = StoreReader(store)
    mesh = sharding.make_mesh(devices, 1, 1, devices=jax.devices()[:devices])
    device = train.PhaseRunner(config, model_cfg, plan, mesh, source.encoding)
    host = train.PhaseRunner(
        config, model_cfg, plan, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    )
    s_host = host.init_state(jax.random.key(0))  # decode.EXACT: casts only
    s_dev = jax.device_put(jax.device_get(s_host), device.state_shardings)
    # Sharding reorders the fp32 batch reductions (test_trainer_step's tolerance).
    rtol, atol = (1e-6, 0.0) if devices == 1 else (2e-5, 1e-6)
    B = config.data.batch_size
    for i in range(2):
        rows = np.arange(i * B, (i + 1) * B)
        stored = source.read_indices(rows)
        decoded = reader.read(rows, fields=source.fields, hidden_normalized=True)
        # The values under the exact profile's stored names (decode.EXACT: casts only).
        decoded["topk/ids"], decoded["topk/logprobs"] = (
            decoded.pop("topk_ids"),
            decoded.pop("topk_logprobs"),
        )
        s_dev, m_dev = device.step(s_dev, device.put_batch(stored))
        s_host, m_host = host.step(s_host, host.put_batch(decoded))
        for key in ("loss", "kd", "nll", "hidden_mse"):
            np.testing.assert_allclose(m_dev[key], m_host[key], rtol=rtol, atol=atol, err_msg=key)
