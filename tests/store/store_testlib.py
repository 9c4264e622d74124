"""Synthetic teacher signal for the store tests (a module, not conftest: several
test folders have a conftest.py, so `from conftest import ...` is ambiguous)."""

import numpy as np


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def synth_unit(rng, rows, schema, top_p_drop=True):
    """One unit of inputs for write_unit: tokens, sorted top-k of a real log-softmax, outlier-heavy hidden."""
    T, K, V, D, S = schema.seq_len, schema.k, schema.vocab_size, schema.hidden_dim, schema.samples
    tokens = rng.integers(0, V, (rows, T), dtype=np.int32)
    out = {"tokens": tokens, "topk_ids": None, "topk_logprobs": None, "hidden": {}}
    if K or S:
        lp = _log_softmax(rng.normal(size=(rows, T, V)) * 2.5).astype(np.float32)
    if K:
        ids = np.argsort(-lp, axis=-1, kind="stable")[..., :K]
        topk = np.take_along_axis(lp, ids, -1)
        if top_p_drop:  # Slots a top-p truncation dropped: -inf, id 0.
            topk[:, 0, K // 2 :] = -np.inf
            ids[:, 0, K // 2 :] = 0
        out["topk_ids"], out["topk_logprobs"] = ids.astype(np.int32), topk
    for layer in schema.hidden_layers:
        h = rng.standard_t(5, size=(rows, T, D)).astype(np.float32) * 30.0
        h[..., 1] *= 40.0  # A massive-activation channel, as in real residual streams.
        out["hidden"][layer] = h
    if S:  # Drawn last, so stores without samples get the same data as before.
        out.update(draw_samples(rng, lp, S))
    return out


def draw_samples(rng, lp_xV, S):
    """S i.i.d. draws per position from softmax(lp), as write_unit's sampled_* (distinct ascending + counts)."""
    lead = lp_xV.shape[:-1]
    flat = lp_xV.reshape(-1, lp_xV.shape[-1]).astype(np.float64)
    ids = np.zeros((flat.shape[0], S), np.int32)
    counts = np.zeros((flat.shape[0], S), np.uint8)
    lps = np.full((flat.shape[0], S), -np.inf, np.float32)
    for i, row in enumerate(flat):
        p = np.exp(row - row.max())
        draws = rng.choice(row.size, size=S, p=p / p.sum())
        u, c = np.unique(draws, return_counts=True)
        ids[i, : u.size], counts[i, : u.size], lps[i, : u.size] = u, c, row[u]
    return {
        "sampled_ids": ids.reshape(*lead, S),
        "sampled_counts": counts.reshape(*lead, S),
        "sampled_logprobs": lps.reshape(*lead, S),
    }


def write_synth(url, schema, num_rows, seed=0, units=None):
    """Creates a store and writes synth_unit data (drawn for every unit, written for ``units``, None: all).

    Returns (writer, {unit: inputs}).
    """
    from store import create_store

    w = create_store(url, schema, num_rows=num_rows)
    rng = np.random.default_rng(seed)
    data = {}
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        data[u] = synth_unit(rng, b - a, schema)
        if units is None or u in units:
            w.write_unit(u, **data[u])
    return w, data


def check_round_trip(url, schema, capsys):
    """The remote round trip every object-store scheme passes (s3://, gs://): write 10
    rows (3 units of ``schema``'s 4 rows), read rows 4..8 (unit 1) back exactly, then
    ``python -m store inspect|verify|stats`` each exit 0 and print their headline.

    Returns {unit: inputs} (as write_synth).
    """
    from store import StoreReader, cli

    _, data = write_synth(url, schema, 10, seed=0)
    r = StoreReader(url)
    assert r.num_units == 3 and r.committed_units == {0, 1, 2}
    got = r.read(np.arange(4, 8))
    np.testing.assert_array_equal(got["tokens"], data[1]["tokens"])
    np.testing.assert_array_equal(got["topk_ids"], data[1]["topk_ids"])
    for verb in ("inspect", "verify", "stats"):
        assert cli.main([verb, url]) == 0, verb
    out = capsys.readouterr().out
    assert (
        "units committed 3/3" in out
        and "OK: 3/3 units committed, 0 bad" in out
        and "stats over" in out
    ), out
    return data


def load_bench(name):
    """Imports bench/<name>.py (bench/ is not a package)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
