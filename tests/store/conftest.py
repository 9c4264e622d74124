"""Fixtures for the store tests: tiny schemas and synthetic teacher signal."""

import numpy as np
import pytest
from store_testlib import synth_unit  # noqa: F401  (fixtures below use it)

from store import StoreSchema, create_store


@pytest.fixture
def make_schema():
    def make(profile="exact", T=16, K=8, V=300, layers=(2,), D=32, R=4, **kw):
        return StoreSchema(
            seq_len=T,
            k=K,
            vocab_size=V,
            hidden_layers=layers,
            hidden_dim=D if layers else 0,
            profile=profile,
            rows_per_unit=R,
            tokenizer={"sha256": "tok-sha", "vocab_size": V, "bos_id": 2, "eos_id": 1, "pad_id": 0},
            teacher={
                "name": "tiny",
                "fingerprint": "fp-1",
                "num_layers": 4,
                "d_model": D,
                "config": {},
            },
            packing={"rule": "noam"},
            **kw,
        )

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
        for u in range(w.num_units) if units is None else units:
            a, b = w.unit_rows(u)
            data[u] = synth_unit(rng, b - a, schema)
            w.write_unit(u, **data[u])
        return url, schema, data

    return build
