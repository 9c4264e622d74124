"""Noam packing math: layouts, unit pieces and reassembly, held-out split."""

import numpy as np
import pytest

from pipelines import packing


def _chunks(seed, num_chunks):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(4, 100, size=rng.integers(0, 40)) for _ in range(num_chunks * 3)]
    chunks = {}
    for i in range(num_chunks):
        part = docs[3 * i : 3 * i + 3]
        chunks[(i // 4, i % 4)] = np.concatenate([packing.pack_document(d, 2, 1) for d in part])
    return docs, chunks


@pytest.mark.parametrize("seq_len,rows_per_unit", [(8, 1), (8, 3), (16, 4), (5, 7)])
def test_split_and_assemble_equal_single_process_packing(seq_len, rows_per_unit):
    docs, chunks = _chunks(0, 13)
    ref = packing.pack_stream(docs, 2, 1, seq_len)
    # Counts arrive in any order (as from a parallel runner).
    counts = [(key, len(t)) for key, t in reversed(list(chunks.items()))]
    layout = packing.make_layout(counts, seq_len, rows_per_unit)
    assert layout.num_rows == len(ref)
    pieces = {}
    for key in sorted(chunks, key=lambda k: hash(k) % 7):
        for unit, piece in packing.split_chunk(layout, key, chunks[key]):
            pieces.setdefault(unit, []).append(piece)
    assert sorted(pieces) == list(range(layout.num_units))
    rows = np.concatenate(
        [packing.assemble_unit(layout, u, pieces[u][::-1]) for u in range(layout.num_units)]
    )
    np.testing.assert_array_equal(rows, ref)


def test_final_partial_row_is_dropped():
    layout = packing.make_layout([((0, 0), 10)], seq_len=4, rows_per_unit=2)
    assert layout.num_rows == 2 and layout.num_units == 1
    pieces = list(packing.split_chunk(layout, (0, 0), np.arange(10, dtype=np.int32)))
    assert [(u, p, list(x)) for u, (p, x) in pieces] == [(0, 0, list(range(8)))]


def test_skip_units_and_missing_piece_detected():
    layout = packing.make_layout([((0, 0), 12), ((0, 1), 12)], seq_len=4, rows_per_unit=2)
    tokens = np.arange(12, dtype=np.int32)
    units = [u for u, _ in packing.split_chunk(layout, (0, 1), tokens, skip_units={2})]
    assert units == [1]
    pieces = [p for u, p in packing.split_chunk(layout, (0, 0), tokens) if u == 1]
    with pytest.raises(AssertionError, match="expected 8"):
        packing.assemble_unit(layout, 1, pieces)


def test_heldout_split_is_deterministic_and_sized():
    texts = [f"document number {i}" for i in range(4000)]
    held = [t for t in texts if packing.is_heldout(t, 0.1)]
    assert 300 < len(held) < 500
    assert held == [t for t in texts if packing.is_heldout(t, 0.1)]
    assert not any(packing.is_heldout(t, 0.0) for t in texts)
    # A larger fraction holds out a superset: growing the split never moves
    # a document from held-out back to train.
    assert set(held) <= {t for t in texts if packing.is_heldout(t, 0.2)}


def test_duplicate_chunks_and_pieces_count_once():
    """A runner may deliver a re-executed bundle's output twice: harmless."""
    counts = [((0, 0), 5), ((0, 1), 7), ((1, 0), 4)]
    once = packing.make_layout(counts, seq_len=4, rows_per_unit=2)
    twice = packing.make_layout(counts + counts[:2], seq_len=4, rows_per_unit=2)
    assert twice == once and once.offsets == {(0, 0): 0, (0, 1): 5, (1, 0): 12}
    with pytest.raises(AssertionError, match=r"chunk \(0, 1\) was tokenized twice"):
        packing.make_layout(counts + [((0, 1), 8)], seq_len=4, rows_per_unit=2)
    a, b = np.arange(4, dtype=np.int32), np.arange(4, 8, dtype=np.int32)
    pieces = packing.unique_pieces(0, [(0, a), (4, b), (0, a.copy())])
    np.testing.assert_array_equal(packing.assemble_unit(once, 0, pieces).ravel(), np.arange(8))
    with pytest.raises(AssertionError, match="two different pieces at position 0"):
        packing.unique_pieces(0, [(0, a), (0, b)])
