"""The compact encoder's fast top-n outlier selection: the n largest |y|, ties to the lower channel."""

import hashlib

import numpy as np
import pytest

from store import profiles, topn

# sha256 of profiles.PROFILES["compact"].encode_hidden(3, x) for golden_inputs(), recorded
# with the argpartition encoder (store/profiles.py before the fast selection).
# Unchanged by the ties-to-the-lower-channel rule: these inputs have no tied top-n set (checked
# when the rule came in). Updating a digest is legitimate only with a deliberate compact format change.
GOLDEN = {
    (2, 64, 2560): "2f28f8bed866217964f16cc3746646520123b0fa094c8ffe8c48491b29ad0032",
    (1, 32, 1000): "75b9b3b6da9e55d4dcdeef73abcbd87560b067a645d37c3429402339057cbd3a",
    (1, 16, 100): "b8dfc04a8a49ce83af116f23a38ee5a5b9837771c0dafd481b8b0e82cfa570f2",
    (1, 8, 7): "93a76a21e2d9618d2922c79b801e88354ade0572c9826c6f5d880db868758acb",
}


def golden_inputs():
    """Teacher-like activations (Student-t, per-channel scales, 6 massive channels), fixed seed."""
    rng = np.random.default_rng(20261122)
    out = []
    for shape in GOLDEN:
        D = shape[-1]
        x = (
            rng.standard_t(4, shape).astype(np.float32)
            * np.exp(rng.normal(0, 0.5, D)).astype(np.float32)
            * 150
        )
        ch = rng.choice(D, min(6, D), replace=False)
        x[..., ch] *= 50.0
        out.append(x)
    return out


def digest(encoded: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(encoded):
        arr = np.ascontiguousarray(encoded[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def test_compact_encoding_bytes_are_golden():
    for x in golden_inputs():
        assert digest(profiles.PROFILES["compact"].encode_hidden(3, x)) == GOLDEN[x.shape], x.shape


def _reference(a, n):
    # Independent of store.topn: a plain Python sort of (-value, channel) per token.
    out = np.empty(a.shape[:-1] + (n,), np.intp)
    for i in np.ndindex(a.shape[:-1]):
        out[i] = sorted(sorted(range(a.shape[-1]), key=lambda c: (-float(a[i][c]), c))[:n])
    return out


@pytest.mark.parametrize(
    "D, n", [(2560, 8), (1024, 8), (1000, 8), (130, 8), (640, 1), (256, 8), (7, 7), (100, 8)]
)
def test_top_n_channels_takes_the_largest_with_ties_to_the_lower_channel(D, n):
    """Including boundary ties (all-zero tokens, coarse values, equal outliers), on both paths
    (D = 2560, 1024, 640, 256: block pre-selection; 1000, 130, 7, 100: the full-row fallback)."""
    rng = np.random.default_rng(D * 10 + n)
    a = np.abs(rng.standard_t(4, (3, 40, D))).astype(np.float32)
    a[0, 0] = 0.0  # all-zero token: every channel ties
    a[0, 1] = np.rint(a[0, 1])  # coarse values: many ties
    a[0, 2, : min(D, 12)] = 99.0  # 12 equal outliers for n = 8 slots
    a[0, 3, rng.choice(D, min(D, n + 1), replace=False)] = 7.0  # n+1 tied at the boundary
    a[1, :, rng.choice(D, min(D, 6), replace=False)] *= 50.0  # massive channels (the common case)
    a[2, 5, -min(D, n + 3) :] = 3e3  # ties among the highest channels, above all else
    got = topn.top_n_channels(a, n)
    assert got.dtype == np.intp and got.shape == (3, 40, n)
    np.testing.assert_array_equal(got, _reference(a, n))
    np.testing.assert_array_equal(got[0, 0], np.arange(n))  # all-zero token: the n lowest channels
    np.testing.assert_array_equal(got[2, 5], np.arange(D - min(D, n + 3), D - min(D, n + 3) + n))
