"""The direct local-file read path returns exactly what TensorStore returns, and catches corruption."""

import json

import google_crc32c
import numpy as np
import pytest

from store import CorruptStoreError, StoreReader, localread
from store import reader as reader_mod

PROFILES = {"exact": {}, "compact": {}, "lean_s4": dict(profile="lean", K=0, samples=4)}


def _assert_paths_equal(url, monkeypatch, row_sets):
    """Every stored array, every row set: the local path (all arrays) == TensorStore's, bitwise."""
    fast = StoreReader(url)
    assert all(isinstance(h, localread.LocalArrayReader) for h in fast._handles().values())
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", False)
    slow = StoreReader(url)
    assert not any(isinstance(h, localread.LocalArrayReader) for h in slow._handles().values())
    for rows in row_sets:
        a, b = fast.read_stored(rows, fast._specs), slow.read_stored(rows, slow._specs)
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            np.testing.assert_array_equal(
                a[name].view(np.uint8), b[name].view(np.uint8), err_msg=f"{name} rows {rows}"
            )
    return fast


@pytest.mark.parametrize("case", list(PROFILES))
@pytest.mark.parametrize("R", [4, 3])
def test_local_path_equals_tensorstore(filled_store, monkeypatch, case, R):
    kw = dict(PROFILES[case])
    url, schema, _ = filled_store(kw.pop("profile", case), num_rows=10, R=R, **kw)
    # Sampled rows too: repeats, out of order, across units.
    rng = np.random.default_rng(R)
    fast = _assert_paths_equal(
        url,
        monkeypatch,
        ([0], [9], [2, 3, 4, 5, 6], [8, 1, 1, 7], list(range(10)), list(rng.integers(0, 10, 7))),
    )
    zstd = {n for n, h in fast._handles().items() if h.zstd}
    assert bool(zstd) == (case == "compact"), (
        zstd
    )  # compact: its zstd arrays take the local path (lean: none)
    if case != "exact":
        assert any(
            np.dtype(h.dtype).itemsize == 1 for h in fast._handles().values()
        )  # endian-less bytes codec


def test_zstd_inner_chunks_split_rows(filled_store, monkeypatch):
    """compact int8 rows of 2 MiB: 2 rows per zstd inner chunk, read whole, partially and across shards."""
    url, _, _ = filled_store("compact", num_rows=10, R=4, T=512, D=4096, K=0)
    fast = _assert_paths_equal(url, monkeypatch, ([1, 2, 5, 6, 7, 8], [0, 1, 2, 3], [9]))
    assert fast._handles()["hidden/2"].zstd and fast._handles()["hidden/2"].chunks_per_shard == 2


def test_eligible_refuses_other_codecs():
    def meta(dtype, inner):
        return {
            "shape": [8, 4],
            "data_type": dtype,
            "chunk_key_encoding": {"name": "default"},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [4, 4],
                        "codecs": inner,
                        "index_location": "end",
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                    },
                }
            ],
        }

    little, plain, crc = (
        {"name": "bytes", "configuration": {"endian": "little"}},
        {"name": "bytes"},
        {"name": "crc32c"},
    )
    zstd = {"name": "zstd", "configuration": {"level": 3, "checksum": False}}
    assert localread.eligible(meta("uint8", [plain, zstd, crc])) and localread.eligible(
        meta("int16", [little, crc])
    )
    assert not localread.eligible(meta("int16", [plain, crc]))  # no endianness for a 2-byte dtype
    assert not localread.eligible(
        meta("uint8", [plain, {"name": "gzip", "configuration": {"level": 5}}, crc])
    )
    assert not localread.eligible(meta("uint8", [plain, zstd]))  # no crc32c


def _shard(tmp_path, name, unit=0):
    return tmp_path / "s" / name / "c" / str(unit) / "0" / "0"


def _chunk0(path):
    """(shard bytes, chunk 0's (offset, nbytes)) of a one-chunk-per-shard shard."""
    data = bytearray(path.read_bytes())
    index = np.frombuffer(bytes(data[-20:-4]), "<u8")
    return data, (int(index[0]), int(index[1]))


@pytest.mark.parametrize("use_local", [True, False])
@pytest.mark.parametrize(
    "profile", ["exact", "compact"]
)  # hidden/2: float16 uncompressed, int8 zstd
def test_both_paths_detect_a_flipped_byte(filled_store, tmp_path, monkeypatch, use_local, profile):
    url, _, _ = filled_store(profile, num_rows=8)
    zstd = json.loads((tmp_path / "s" / "hidden" / "2" / "zarr.json").read_text())["codecs"][0][
        "configuration"
    ]
    assert ("zstd" in json.dumps(zstd["codecs"])) == (profile == "compact")
    path = _shard(tmp_path, "hidden/2", 1)
    data, (offset, nbytes) = _chunk0(path)
    data[offset + nbytes // 2] ^= 0x01
    path.write_bytes(bytes(data))
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", use_local)
    r = StoreReader(url)
    r.read([0, 1, 2, 3])  # other units are fine
    with pytest.raises(CorruptStoreError, match="python -m store repair"):
        r.read([5])


@pytest.mark.parametrize("use_local", [True, False])
@pytest.mark.parametrize("how", ["frame_cut_crc_recomputed", "shard_cut_index_kept"])
def test_both_paths_detect_a_truncated_zstd_chunk(
    filled_store, tmp_path, monkeypatch, use_local, how
):
    url, _, _ = filled_store("compact", num_rows=8)
    path = _shard(tmp_path, "hidden/2", 1)
    data, (offset, nbytes) = _chunk0(path)
    assert offset == 0 and nbytes + 20 == len(data)
    if how == "frame_cut_crc_recomputed":
        # A frame short of its end with a VALID crc32c and index: only the zstd decode can tell.
        frame = bytes(data[: nbytes - 4 - 40])
        chunk = frame + google_crc32c.value(frame).to_bytes(4, "little")
        index = np.array([0, len(chunk)], "<u8").tobytes()
        data = chunk + index + google_crc32c.value(index).to_bytes(4, "little")
    else:  # The file lost the chunk's tail; the index (still sound) claims the full size.
        data = data[: nbytes // 2] + data[-20:]
    path.write_bytes(bytes(data))
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", use_local)
    with pytest.raises(CorruptStoreError, match="python -m store repair"):
        StoreReader(url).read([5])


def test_inner_chunks_split_rows(filled_store):
    """Large rows give several inner chunks per shard, read whole or partially."""
    # A 2 MiB hidden row: 2 rows per 4 MiB inner chunk, 2 inner chunks per 4-row shard.
    url, schema, data = filled_store("exact", num_rows=10, R=4, T=512, D=2048, K=0)
    r = StoreReader(url)
    h = r._handles()["hidden/2"]
    assert isinstance(h, localread.LocalArrayReader) and h.chunks_per_shard == 2
    tok = r._handles()["tokens"]
    assert (
        tok.chunks_per_shard == 1
    )  # tokens: one whole-unit chunk, a 1-row read goes through scratch
    got = r.read([1, 2, 5, 6, 7, 8])  # chunk halves, a whole chunk, a run across shards
    assert (got["tokens"][2] == data[1]["tokens"][1]).all()
    want = np.concatenate(
        [data[0]["hidden"][2][1:3], data[1]["hidden"][2][1:4], data[2]["hidden"][2][:1]]
    )
    cos = (
        (got["hidden/2"] * want).sum(-1)
        / np.linalg.norm(got["hidden/2"], axis=-1)
        / np.linalg.norm(want, axis=-1)
    )
    assert cos.min() > 0.99999
