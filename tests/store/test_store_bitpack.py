"""Bit-packed ids: the little-endian stream layout of store/bitpack.py, round trips, and old unpacked compact stores."""

import numpy as np
import pytest
import test_store_sampled as golden

from store import (
    CorruptStoreError,
    SchemaMismatchError,
    StoreReader,
    bitpack,
    layout,
    metadata,
    open_writer,
    profiles,
)
from store.verify import verify_store


def test_bits_for():
    assert [bitpack.bits_for(v) for v in (1, 2, 3, 2048, 2049, 32000, 65536, 262144)] == [
        1,
        1,
        2,
        11,
        12,
        15,
        16,
        18,
    ]


def test_stream_layout_is_little_endian_by_hand():
    # id 0 = 1 -> stream bit 0; id 1 = 2047 -> stream bits 11..21. Bytes: bits 0..7, 8..15, 16..23.
    packed = bitpack.pack(np.array([[1, 2047]]), 11)
    assert packed.dtype == np.uint8 and packed.tolist() == [[0b00000001, 0b11111000, 0b00111111]]
    # 3 bits: ids 5, 3, 7 -> stream 101 110 111 (LSB first) = bits 0,2 | 3,4 | 6,7,8.
    assert bitpack.pack(np.array([5, 3, 7]), 3).tolist() == [0b11011101, 0b00000001]
    np.testing.assert_array_equal(
        np.unpackbits(packed, bitorder="little")[11:22], np.ones(11, np.uint8)
    )


@pytest.mark.parametrize("bits", [1, 7, 8, 11, 15, 16, 18, 31])
def test_round_trip_across_blocks(monkeypatch, bits):
    monkeypatch.setattr(bitpack, "_BLOCK_POSITIONS", 3)  # several blocks in a tiny array
    rng = np.random.default_rng(bits)
    ids = rng.integers(0, 2**bits, (2, 5, 7))
    ids[0, 0] = 2**bits - 1
    packed = bitpack.pack(ids, bits)
    assert packed.shape == (2, 5, (7 * bits + 7) // 8)
    for dtype in (np.int32, np.int64, np.uint32):
        got = bitpack.unpack(packed, 7, bits, dtype)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, ids)


def test_unpack_refuses_a_wrong_width():
    with pytest.raises(
        CorruptStoreError, match="packed ids have 4 bytes per position, 2 ids of 12 bits need 3"
    ):
        bitpack.unpack(np.zeros((1, 4), np.uint8), 2, 12)


def _legacy_store(tmp_path, monkeypatch, name="old"):
    """A compact store written the way main wrote it before ids were packed (no ids_bits in the manifest)."""
    with monkeypatch.context() as m:
        m.setitem(profiles.PROFILES, "compact", profiles.LEGACY["compact"])
        _, data = golden._write(tmp_path / name, golden._golden_schema("compact"))
    return tmp_path / name, data


def test_old_unpacked_compact_store_reads_and_resumes_as_before(tmp_path, monkeypatch):
    old, data = _legacy_store(tmp_path, monkeypatch)
    assert (
        golden._store_digest(old) == golden.GOLDEN_FILES["compact_unpacked_ids"]
    )  # byte-identical to main's writer
    r = StoreReader(old)
    assert (
        "ids_bits" not in r.manifest["encodings"]
        and r.read_stored([0], ["topk/ids"])["topk/ids"].dtype == np.uint16
    )
    new_url = tmp_path / "new"
    golden._write(new_url, golden._golden_schema("compact"))
    got, want = r.read(np.arange(6)), StoreReader(new_url).read(np.arange(6))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert verify_store(old)["ok"]
    # Resuming the old dump (a re-written unit) keeps the old layout, byte for byte.
    open_writer(old).write_unit(1, **data[1])
    assert golden._store_digest(old) == golden.GOLDEN_FILES["compact_unpacked_ids"]


def test_manifest_with_other_ids_bits_is_refused(tmp_path):
    url = tmp_path / "s"
    golden._write(url, golden._golden_schema("compact"))
    kv = layout.open_kvstore(str(url))
    root = layout.read_json(kv, "zarr.json")
    root["attributes"]["encodings"]["ids_bits"] = 12
    layout.write_group(kv, "", root["attributes"])  # as written by that package: root and its copy
    kv.write(metadata.COPY_KEY, metadata.copy_bytes(root["attributes"])).result()
    with pytest.raises(
        SchemaMismatchError, match="encodings.ids_bits=12, this package.s compact profile uses 9"
    ):
        StoreReader(url)
