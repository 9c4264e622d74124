"""StoreReader.read modes: the normalized / 16-bit loader-style read, and the unchanged default decode."""

import warnings

import numpy as np
import pytest
import zarr
import zarr_decode

from store import StoreInputError, StoreReader
from store import reader as reader_mod

ROWS = [7, 2, 3, 0, 9, 9]  # shuffled, a contiguous run, a repeat: several runs per read


def _zarr_group(url):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_group(url.removeprefix("file://"), mode="r")


def _capture_stored(monkeypatch, reader):
    """Records the dict of stored arrays each read() decodes from."""
    seen = []
    original = reader._read_stored

    def spy(rows, names):
        seen.append(original(rows, names))
        return seen[-1]

    monkeypatch.setattr(reader, "_read_stored", spy)
    return seen


@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_default_read_is_the_documented_float32_decode(filled_store, monkeypatch, profile, local):
    """The default read is bit-for-bit the numpy decode of the manifest (zarr-python reads the arrays)."""
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", local)
    url, schema, _ = filled_store(profile, num_rows=10)
    g = _zarr_group(url)
    got = StoreReader(url).read(ROWS)
    assert got["tokens"].dtype == np.int32 and got["topk_ids"].dtype == np.int32
    assert got["topk_logprobs"].dtype == np.float32 and got["hidden/2"].dtype == np.float32
    np.testing.assert_array_equal(got["tokens"], g["tokens"][:][ROWS])
    ids, lp = zarr_decode.topk(g)
    np.testing.assert_array_equal(got["topk_ids"], ids[ROWS])
    np.testing.assert_array_equal(got["topk_logprobs"], lp[ROWS])
    np.testing.assert_array_equal(got["hidden/2"], zarr_decode.hidden(g, 2)[ROWS])


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_normalized_read_is_decode_over_rms(filled_store, profile):
    url, schema, data = filled_store(profile, num_rows=10)
    r = StoreReader(url)
    x = r.read(ROWS, fields=("hidden/2",))["hidden/2"]
    rms = r.read_stored(ROWS, ["hidden_aux/2/rms"])["hidden_aux/2/rms"]
    want = x / rms[..., None]
    y32 = r.read(ROWS, fields=("hidden/2",), hidden_normalized=True)["hidden/2"]
    y16 = r.read(ROWS, fields=("hidden/2",), hidden_normalized=True, hidden_dtype=np.float16)[
        "hidden/2"
    ]
    assert y32.dtype == np.float32 and y16.dtype == np.float16 and y16.shape == x.shape
    np.testing.assert_allclose(y32, want, rtol=1e-6, atol=1e-6)
    # float16 tolerance: half an ulp of each element (y is O(1), |y| <= sqrt(D)).
    np.testing.assert_allclose(y16.astype(np.float32), want, rtol=2**-11, atol=2**-24)
    # float16 is the correctly rounded float32 result, not a second approximation.
    np.testing.assert_array_equal(y16, y32.astype(np.float16))
    # Per-token RMS of the normalized vector is 1 (up to the encoding error), direction = the input's.
    inp = np.concatenate([data[u]["hidden"][2] for u in sorted(data)])[ROWS]
    assert np.abs(np.sqrt(np.mean(y32.astype(np.float64) ** 2, -1)) - 1).max() < 2e-2
    cos = (y32 * inp).sum(-1) / np.linalg.norm(y32, axis=-1) / np.linalg.norm(inp, axis=-1)
    assert cos.min() > (0.99999 if profile == "exact" else 0.999)


@pytest.mark.parametrize("local", [True, False])
def test_exact_loader_read_returns_the_stored_arrays(filled_store, monkeypatch, local):
    """Exact + normalized float16 + stored ids + float16 log-probs: the stored bytes, no decode, no RMS read."""
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", local)
    url, schema, _ = filled_store("exact", num_rows=10)
    r = StoreReader(url)
    seen = _capture_stored(monkeypatch, r)
    got = r.read(
        ROWS,
        hidden_normalized=True,
        hidden_dtype=np.float16,
        ids_dtype=r.stored_ids_dtype,
        logprobs_dtype=np.float16,
    )
    stored = seen[-1]
    assert "hidden_aux/2/rms" not in stored  # the per-token RMS is not even read
    assert got["hidden/2"] is stored["hidden/2"]  # zero copy: the read buffer itself
    assert got["topk_ids"] is stored["topk/ids"] and got["topk_logprobs"] is stored["topk/logprobs"]
    g = _zarr_group(url)
    for key, name in (
        ("hidden/2", "hidden/2"),
        ("topk_ids", "topk/ids"),
        ("topk_logprobs", "topk/logprobs"),
    ):
        want = g[name][:][ROWS]
        assert got[key].dtype == want.dtype, key
        assert got[key].tobytes() == want.tobytes(), key  # bit-exact, NaN/-inf/-0 included


def test_compact_loader_read(filled_store):
    url, schema, _ = filled_store("compact", num_rows=10)
    r = StoreReader(url)
    full = r.read(ROWS)
    got = r.read(
        ROWS,
        hidden_normalized=True,
        hidden_dtype=np.float16,
        ids_dtype=r.stored_ids_dtype,
        logprobs_dtype=np.float16,
    )
    assert got["topk_ids"].dtype == np.uint16 and got["topk_logprobs"].dtype == np.float16
    np.testing.assert_array_equal(got["topk_ids"], full["topk_ids"])
    np.testing.assert_array_equal(got["topk_logprobs"], full["topk_logprobs"].astype(np.float16))
    np.testing.assert_array_equal(got["tokens"], full["tokens"])


@pytest.mark.parametrize(
    "kw, fix",
    [
        ({"hidden_dtype": np.int8}, "not a floating dtype"),
        ({"logprobs_dtype": "int16"}, "not a floating dtype"),
        ({"ids_dtype": np.uint8}, "cannot hold ids below vocab_size=300"),
        ({"ids_dtype": np.float32}, "cannot hold ids"),
    ],
)
def test_bad_read_dtypes_are_one_line_errors(filled_store, kw, fix):
    url, _, _ = filled_store("exact", num_rows=4)
    with pytest.raises(StoreInputError) as e:
        StoreReader(url).read([0], **kw)
    msg = str(e.value)
    assert fix in msg and "use np." in msg and "\n" not in msg
