"""The direct local-file read path returns exactly what TensorStore returns, and catches corruption."""
import numpy as np
import pytest

from store import CorruptStoreError, StoreReader, localread, reader as reader_mod


@pytest.mark.parametrize("profile", ["exact", "compact"])
@pytest.mark.parametrize("R", [4, 3])
def test_local_path_equals_tensorstore(filled_store, monkeypatch, profile, R):
    url, schema, _ = filled_store(profile, num_rows=10, R=R)
    fast = StoreReader(url)
    n_local = sum(isinstance(h, localread.LocalArrayReader) for h in fast._handles().values())
    assert n_local == (len(fast._specs) if profile == "exact" else 6)  # compact: zstd arrays use TensorStore
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", False)
    slow = StoreReader(url)
    assert not any(isinstance(h, localread.LocalArrayReader) for h in slow._handles().values())
    for rows in ([0], [9], [2, 3, 4, 5, 6], [8, 1, 1, 7], list(range(10))):
        a, b = fast.read_stored(rows, fast._specs), slow.read_stored(rows, slow._specs)
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} rows {rows}")


def test_inner_chunks_split_rows(filled_store):
    """Large rows give several inner chunks per shard, read whole or partially."""
    # A 2 MiB hidden row: 2 rows per 4 MiB inner chunk, 2 inner chunks per 4-row shard.
    url, schema, data = filled_store("exact", num_rows=10, R=4, T=512, D=2048, K=0)
    r = StoreReader(url)
    h = r._handles()["hidden/2"]
    assert isinstance(h, localread.LocalArrayReader) and h.chunks_per_shard == 2
    tok = r._handles()["tokens"]
    assert tok.chunks_per_shard == 1  # tokens: one whole-unit chunk, a 1-row read goes through scratch
    got = r.read([1, 2, 5, 6, 7, 8])  # chunk halves, a whole chunk, a run across shards
    assert (got["tokens"][2] == data[1]["tokens"][1]).all()
    want = np.concatenate([data[0]["hidden"][2][1:3], data[1]["hidden"][2][1:4], data[2]["hidden"][2][:1]])
    cos = (got["hidden/2"] * want).sum(-1) / np.linalg.norm(got["hidden/2"], axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.99999


@pytest.mark.parametrize("use_local", [True, False])
def test_both_paths_detect_flipped_bytes(filled_store, tmp_path, monkeypatch, use_local):
    url, _, _ = filled_store("exact", num_rows=8)
    shard = tmp_path / "s" / "hidden" / "2" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", use_local)
    r = StoreReader(url)
    r.read([0, 1, 2, 3])  # other units are fine
    with pytest.raises(CorruptStoreError, match="python -m store repair"):
        r.read([5])


def test_missing_shard_of_committed_unit(filled_store, tmp_path):
    url, _, _ = filled_store("exact", num_rows=8)
    (tmp_path / "s" / "hidden" / "2" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(CorruptStoreError, match="missing"):
        StoreReader(url).read([1])
