"""A store is readable by plain zarr-python (no store package on the read path)."""

import numpy as np
import pytest
import zarr_decode

from store import StoreReader, create_store


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_zarr_python_reads_and_decodes(filled_store, profile):
    url, schema, data = filled_store(profile, num_rows=8)
    g = zarr_decode.open_group(url)
    manifest = dict(g.attrs)
    assert manifest["schema"]["profile"] == profile and manifest["encodings"]["profile"] == profile
    assert (g["tokens"][:][4:8] == data[1]["tokens"]).all()
    ids, lp = zarr_decode.topk(g)
    if profile == "exact":
        assert g["topk/ids"].dtype == np.uint16 and "ids_bits" not in manifest["encodings"]
    else:  # 300 ids need 9 bits: 8 slots in 9 bytes
        assert g["topk/ids"].dtype == np.uint8 and g["topk/ids"].shape[-1] == 9
        assert manifest["encodings"]["ids_bits"] == 9
    assert (ids[:4] == data[0]["topk_ids"]).all()
    h = zarr_decode.hidden(g, 2)
    ours = StoreReader(url).read(np.arange(8))
    np.testing.assert_allclose(lp, ours["topk_logprobs"], rtol=1e-6)
    np.testing.assert_allclose(h, ours["hidden/2"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("profile", ["exact", "compact", "lean"])
@pytest.mark.parametrize("V", [2048, 32000, 262144])
def test_zarr_python_decodes_ids_and_samples_at_large_vocab(tmp_path, make_schema, profile, V):
    """Packed ids (ceil(log2 V) bits) and the sampled family, decoded by the manifest's rules alone."""
    schema = make_schema(profile, T=4, K=5, V=V, layers=(), R=2, samples=7)
    w = create_store(tmp_path / "s", schema, num_rows=3)
    rng = np.random.default_rng(V)
    want = {}
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        d = _sparse_unit(rng, b - a, schema)
        w.write_unit(u, **d)
        want[u] = d
    g = zarr_decode.open_group(tmp_path / "s")
    cat = lambda k: np.concatenate([want[u][k] for u in sorted(want)])
    ids, _ = zarr_decode.topk(g)
    np.testing.assert_array_equal(ids, cat("topk_ids"))
    s_ids, s_counts, s_lp = zarr_decode.sampled(g)
    np.testing.assert_array_equal(s_ids, cat("sampled_ids"))
    np.testing.assert_array_equal(s_counts, cat("sampled_counts"))
    np.testing.assert_array_equal(
        s_lp, cat("sampled_logprobs").astype(np.float16).astype(np.float32)
    )
    if profile != "exact":
        bits = g.attrs["encodings"]["ids_bits"]
        assert bits == {2048: 11, 32000: 15, 262144: 18}[V]
        assert (
            g["sampled/ids"].shape[-1] == (7 * bits + 7) // 8 and g["sampled/ids"].dtype == np.uint8
        )
    ours = StoreReader(tmp_path / "s").read(np.arange(3))
    np.testing.assert_array_equal(ours["sampled_ids"], s_ids)
    np.testing.assert_array_equal(ours["topk_ids"], ids)


def _sparse_unit(rng, rows, schema):
    """Inputs with ids across the whole vocabulary (the top ids included) without a [T, V] softmax."""
    T, K, S, V = schema.seq_len, schema.k, schema.samples, schema.vocab_size
    top = np.stack([rng.choice(V, K, replace=False) for _ in range(rows * T)]).reshape(rows, T, K)
    top[0, 0, 0] = V - 1
    lp = np.sort(-rng.exponential(3.0, (rows, T, K)), axis=-1)[..., ::-1].astype(np.float32)
    n = rng.integers(1, S + 1, (rows, T))
    n[0, 0] = 1  # one distinct draw, set to the largest id below
    ids = np.zeros((rows, T, S), np.int64)
    counts = np.zeros((rows, T, S), np.uint8)
    slp = np.full((rows, T, S), -np.inf, np.float32)
    for r in range(rows):
        for t in range(T):
            u = np.sort(rng.choice(V, n[r, t], replace=False))
            c = np.bincount(rng.integers(0, n[r, t], S - n[r, t]), minlength=n[r, t]) + 1
            ids[r, t, : u.size], counts[r, t, : u.size], slp[r, t, : u.size] = (
                u,
                c,
                -rng.exponential(4.0, u.size),
            )
    ids[0, 0, 0] = V - 1
    return {
        "tokens": rng.integers(0, V, (rows, T), dtype=np.int32),
        "topk_ids": top,
        "topk_logprobs": lp,
        "hidden": {},
        "sampled_ids": ids,
        "sampled_counts": counts,
        "sampled_logprobs": slp,
    }


def test_store_never_imports_jax_or_beam():
    import subprocess
    import sys

    code = (
        "import sys, store, store.cli, store.verify, store.stats, store.inspection; "
        "bad = [m for m in ('jax', 'flax', 'apache_beam') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
