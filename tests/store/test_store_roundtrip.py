"""Round trips through create_store / write_unit / StoreReader.read per profile."""

import concurrent.futures
import multiprocessing
import pickle

import numpy as np
import pytest

from store import StoreReader, create_store, open_writer


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _topk_kl(lp_ref, lp):
    """KL(p_ref || p) per token over the stored support (softmax of the log-probs)."""

    def norm(x):
        x = np.where(np.isfinite(x), x, -np.inf)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    a, b = norm(lp_ref.astype(np.float64)), norm(lp.astype(np.float64))
    p = np.exp(a)
    support = p > 0
    diff = np.where(support, a, 0) - np.where(support, b, 0)
    return (p * diff).sum(-1)


# Tolerances: exact stores fp16 (rel 2^-11); compact int8 + companded uint8.
@pytest.mark.parametrize(
    "profile,max_lp_err,min_cos,max_kl",
    [
        ("exact", 1e-2, 0.99999, 1e-5),
        ("compact", 0.2, 0.9995, 1e-3),
    ],
)
def test_round_trip(filled_store, profile, max_lp_err, min_cos, max_kl):
    url, schema, data = filled_store(profile, num_rows=10)
    r = StoreReader(url)
    assert r.num_rows == 10 and r.num_units == 3
    assert r.committed_rows().tolist() == list(range(10))
    out = r.read(np.arange(4, 10))
    want = {
        k: np.concatenate([data[1][k], data[2][k]]) for k in ("tokens", "topk_ids", "topk_logprobs")
    }
    h_want = np.concatenate([data[1]["hidden"][2], data[2]["hidden"][2]])
    assert out["tokens"].dtype == np.int32 and (out["tokens"] == want["tokens"]).all()
    assert out["topk_ids"].dtype == np.int32 and (out["topk_ids"] == want["topk_ids"]).all()
    lp, lp_want = out["topk_logprobs"], want["topk_logprobs"]
    assert lp.dtype == np.float32
    assert (np.isneginf(lp) == np.isneginf(lp_want)).all()
    fin = np.isfinite(lp_want) & (lp_want > -20)  # compact clips below top - 32 nats
    assert np.abs(lp[fin] - lp_want[fin]).max() < max_lp_err
    assert _topk_kl(lp_want, lp).mean() < max_kl
    h = out["hidden/2"]
    assert h.dtype == np.float32 and h.shape == h_want.shape
    assert np.percentile(_cos(h, h_want), 1) >= min_cos


def test_read_order_subsets_and_dtype(filled_store):
    url, schema, data = filled_store("exact", num_rows=10)
    r = StoreReader(url)
    out = r.read([9, 0, 1, 5], fields=("tokens", "hidden/2"), hidden_dtype=np.float16)
    assert set(out) == {"tokens", "hidden/2"}
    assert out["hidden/2"].dtype == np.float16
    assert (out["tokens"][0] == data[2]["tokens"][1]).all()
    assert (out["tokens"][1:3] == data[0]["tokens"][0:2]).all()
    assert (out["tokens"][3] == data[1]["tokens"][1]).all()
    empty = r.read([], fields=("tokens", "topk"))
    assert empty["tokens"].shape == (0, 16) and empty["topk_ids"].shape == (0, 16, 8)


def test_tokens_only_store(filled_store):
    url, schema, data = filled_store("exact", num_rows=6, K=0, layers=())
    r = StoreReader(url)
    assert r.default_fields() == ("tokens",)
    assert (r.read([5])["tokens"] == data[1]["tokens"][1]).all()


def test_rewrite_is_idempotent(filled_store, tmp_path):
    url, schema, data = filled_store("compact", num_rows=8)
    files = {
        p: p.read_bytes()
        for p in (tmp_path / "s").rglob("*")
        if p.is_file() and "zarr.json" not in p.name
    }
    w = open_writer(url)
    w.write_unit(1, **data[1])
    assert w.committed_units() == {0, 1}
    after = {
        p: p.read_bytes()
        for p in (tmp_path / "s").rglob("*")
        if p.is_file() and "zarr.json" not in p.name
    }
    assert files == after


def test_reopen_identical_and_resize(filled_store, tmp_path):
    url, schema, data = filled_store("exact", num_rows=6)  # units: [0,4) [4,6)
    w = create_store(url, schema, num_rows=6)  # identical: reopens
    assert w.committed_units() == {0, 1}
    w.resize(10)
    # The short last unit grew, so it is no longer committed and must be rewritten.
    assert w.num_units == 3 and w.committed_units() == {0}
    r = StoreReader(url, allow_partial=True)
    assert r.num_rows == 10 and r.committed_rows().tolist() == [0, 1, 2, 3]
    # No empty ledger/unit_00000001/ left behind (plain zarr-python would warn about it).
    # The resize un-committed unit 1 and left a tombstone (store/ledger.py).
    assert sorted(p.name for p in (tmp_path / "s" / "ledger").iterdir()) == [
        "manifest",
        "uncommitted",
        "unit_00000000",
        "zarr.json",
    ]


def _read_tokens(reader, row):
    return reader.read([row], fields=("tokens",))["tokens"][0]


def test_reader_pickles_and_threads(filled_store):
    url, schema, data = filled_store("exact", num_rows=8)
    r = StoreReader(url)
    r.read([0])  # handles opened before pickling must not break it
    r2 = pickle.loads(pickle.dumps(r))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda row: _read_tokens(r2, row), range(8)))
    # TensorStore forbids fork() after its threads start; Grain workers are spawned too.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        got_proc = list(pool.map(_read_tokens, [r] * 2, [3, 7]))
    want = np.concatenate([data[0]["tokens"], data[1]["tokens"]])
    assert all((g == want[i]).all() for i, g in enumerate(got))
    assert (got_proc[0] == want[3]).all() and (got_proc[1] == want[7]).all()


def test_memory_url(make_schema):
    from store_testlib import synth_unit

    schema = make_schema("compact")
    w = create_store("memory://roundtrip_test", schema, num_rows=4)
    unit = synth_unit(np.random.default_rng(1), 4, schema)
    w.write_unit(0, **unit)
    assert (
        StoreReader("memory://roundtrip_test").read([2])["tokens"][0] == unit["tokens"][2]
    ).all()


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_all_zero_unit_round_trips_and_verifies(tmp_path, make_schema, profile):
    """TensorStore skips chunks equal to the fill value unless told not to; a
    zero-valued unit must still read back (not as 'missing shard') and verify."""
    from store import verify

    schema = make_schema(profile)
    w = create_store(tmp_path / "z", schema, num_rows=schema.rows_per_unit)
    R, T, K, D = schema.rows_per_unit, schema.seq_len, schema.k, schema.hidden_dim
    w.write_unit(
        0,
        tokens=np.zeros((R, T), np.int32),
        topk_ids=np.zeros((R, T, K), np.int32),
        topk_logprobs=np.zeros((R, T, K), np.float32),
        hidden={l: np.zeros((R, T, D), np.float32) for l in schema.hidden_layers},
    )
    out = StoreReader(tmp_path / "z").read(np.arange(R))
    assert not out["tokens"].any() and not out["topk_ids"].any()
    assert verify.verify_store(str(tmp_path / "z"))["ok"]
