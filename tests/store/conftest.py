"""Fixtures for the store tests: tiny schemas and synthetic teacher signal."""
import numpy as np
import pytest

from store import StoreSchema, create_store


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def synth_unit(rng, rows, schema, top_p_drop=True):
    """One unit of inputs for write_unit: tokens, sorted top-k of a real log-softmax, outlier-heavy hidden."""
    T, K, V, D = schema.seq_len, schema.k, schema.vocab_size, schema.hidden_dim
    tokens = rng.integers(0, V, (rows, T), dtype=np.int32)
    out = {"tokens": tokens, "topk_ids": None, "topk_logprobs": None, "hidden": {}}
    if K:
        lp = _log_softmax(rng.normal(size=(rows, T, V)) * 2.5).astype(np.float32)
        ids = np.argsort(-lp, axis=-1, kind="stable")[..., :K]
        topk = np.take_along_axis(lp, ids, -1)
        if top_p_drop:  # Slots a top-p truncation dropped: -inf, id 0.
            topk[:, 0, K // 2:] = -np.inf
            ids[:, 0, K // 2:] = 0
        out["topk_ids"], out["topk_logprobs"] = ids.astype(np.int32), topk
    for layer in schema.hidden_layers:
        h = rng.standard_t(5, size=(rows, T, D)).astype(np.float32) * 30.0
        h[..., 1] *= 40.0  # A massive-activation channel, as in real residual streams.
        out["hidden"][layer] = h
    return out


@pytest.fixture
def make_schema():
    def make(profile="exact", T=16, K=8, V=300, layers=(2,), D=32, R=4, **kw):
        return StoreSchema(seq_len=T, k=K, vocab_size=V, hidden_layers=layers, hidden_dim=D if layers else 0,
                           profile=profile, rows_per_unit=R,
                           tokenizer={"sha256": "tok-sha", "vocab_size": V, "bos_id": 2, "eos_id": 1, "pad_id": 0},
                           teacher={"name": "tiny", "fingerprint": "fp-1", "num_layers": 4, "d_model": D,
                                    "config": {}},
                           packing={"rule": "noam"}, **kw)
    return make


@pytest.fixture
def filled_store(tmp_path, make_schema):
    """Builds a fully written store; returns (url, schema, {unit: inputs})."""
    def build(profile="exact", num_rows=10, name="s", seed=0, units=None, **kw):
        schema = make_schema(profile, **kw)
        url = str(tmp_path / name)
        w = create_store(url, schema, num_rows=num_rows)
        rng = np.random.default_rng(seed)
        data = {}
        for u in (range(w.num_units) if units is None else units):
            a, b = w.unit_rows(u)
            data[u] = synth_unit(rng, b - a, schema)
            w.write_unit(u, **data[u])
        return url, schema, data
    return build
