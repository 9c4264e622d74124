"""Noam packing of a document stream into rows, and its cut into work units.

Pure numpy, no Beam: the Beam stages in `pipelines.spine` only move these
values around, and tests check the same functions directly.

The packing rule ("noam"): every document becomes BOS + ids + EOS; all
documents, in the canonical order (`pipelines.inputs`), are concatenated into
one token stream; row n is stream[n*T : (n+1)*T]. Documents cross row
boundaries freely (no padding inside the data). The final partial row is
DROPPED (fewer than T tokens, at most T-1 tokens of the whole corpus), so every
stored row is full and no pad token ever reaches the teacher or the student.

Why row indices do not depend on runner parallelism: the stream is read in
chunks keyed by (file index, chunk index) — an order fixed by the sorted file
list and in-file order, not by which worker reads what. Each chunk's token
count is known after tokenizing it; the global offset of a chunk is the sum of
the counts of all chunks with a smaller key (`Layout`). A chunk's tokens then
go to positions [offset, offset + count) of the stream, whichever worker
produced them, and are regrouped by work unit.
"""

import dataclasses
import hashlib

import numpy as np

PACKING_RULE = {
    "rule": "noam",
    "bos": True,
    "eos": True,
    "final_partial_row": "dropped",
    "order": "sorted files, in-file document order",
}


def pack_document(ids, bos_id, eos_id):
    """Returns BOS + ids + EOS as int32[len(ids) + 2]."""
    out = np.empty(len(ids) + 2, np.int32)
    out[0] = bos_id
    out[1:-1] = ids
    out[-1] = eos_id
    return out


def heldout_score(text):
    """A uniform number in [0, 1) fixed by the document's text alone.

    sha256 (not Python's salted `hash`) so that the split is the same in every
    process, run and runner.
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_heldout(text, fraction):
    """True if the document belongs to the held-out split of size `fraction`."""
    return fraction > 0 and heldout_score(text) < fraction


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every chunk of the token stream goes.

    Attributes:
        offsets: {chunk key: first stream position of the chunk}.
        total_tokens: length of the whole token stream.
        seq_len: T.
        rows_per_unit: R, rows per work unit.
    """

    offsets: dict
    total_tokens: int
    seq_len: int
    rows_per_unit: int

    @property
    def num_rows(self):
        """Full rows; the final partial row is dropped."""
        return self.total_tokens // self.seq_len

    @property
    def num_units(self):
        return -(-self.num_rows // self.rows_per_unit)

    def unit_rows(self, unit):
        """(start, stop) rows of a unit; the last unit may be shorter."""
        start = unit * self.rows_per_unit
        return start, min(start + self.rows_per_unit, self.num_rows)


def make_layout(chunk_counts, seq_len, rows_per_unit):
    """Computes global chunk offsets from per-chunk token counts.

    Args:
        chunk_counts: iterable of (key, num_tokens); keys are sortable tuples
            (file index, chunk index). A key may appear more than once (a
            runner may deliver a re-executed bundle's output again); its
            copies must agree, and count once.
        seq_len: T.
        rows_per_unit: R.

    Returns:
        Layout

    Raises:
        AssertionError: two copies of a chunk disagree on its token count —
            the tokenizer is not deterministic, a bug, never bad input.
    """
    counts = {}
    for key, count in chunk_counts:
        key, count = tuple(key), int(count)
        if counts.setdefault(key, count) != count:
            raise AssertionError(
                f"chunk {key} was tokenized twice with different lengths "
                f"({counts[key]} and {count} tokens)"
            )
    offsets = {}
    position = 0
    for key in sorted(counts):
        offsets[key] = position
        position += counts[key]
    return Layout(offsets, position, seq_len, rows_per_unit)


def split_chunk(layout, key, tokens, skip_units=frozenset()):
    """Cuts one chunk's tokens into per-unit pieces.

    Args:
        layout: the Layout.
        key: the chunk key.
        tokens: int32[n], the chunk's packed tokens.
        skip_units: units to leave out (already committed).

    Yields:
        (unit, (position within the unit's flat R*T buffer, int32 piece)).
        Tokens past the last full row are dropped.
    """
    start = layout.offsets[key]
    stop = min(start + len(tokens), layout.num_rows * layout.seq_len)
    unit_tokens = layout.rows_per_unit * layout.seq_len
    position = start
    while position < stop:
        unit = position // unit_tokens
        unit_end = min((unit + 1) * unit_tokens, stop)
        if unit not in skip_units:
            piece = tokens[position - start : unit_end - start]
            yield unit, (position - unit * unit_tokens, np.ascontiguousarray(piece, np.int32))
        position = unit_end


def unique_pieces(unit, pieces):
    """One copy of each piece of a unit (duplicates of re-executed bundles dropped).

    Args:
        unit: the unit index (for the error message).
        pieces: iterable of (position, int32 piece) from `split_chunk`.

    Returns:
        list of (position, piece), one per position.

    Raises:
        AssertionError: two pieces at one position differ — a bug.
    """
    by_position = {}
    for position, piece in pieces:
        seen = by_position.setdefault(int(position), piece)
        if seen is not piece and not np.array_equal(seen, piece):
            raise AssertionError(f"unit {unit}: two different pieces at position {position}")
    return list(by_position.items())


def assemble_unit(layout, unit, pieces):
    """Joins a unit's pieces into its rows.

    Args:
        layout: the Layout.
        unit: the unit index.
        pieces: iterable of (position, int32 piece) from `split_chunk`, any order.

    Returns:
        int32[rows, T] for the unit's rows.

    Raises:
        AssertionError: pieces overlap or leave a gap — a bug, never bad input.
    """
    start_row, stop_row = layout.unit_rows(unit)
    size = (stop_row - start_row) * layout.seq_len
    flat = np.empty(size, np.int32)
    covered = 0
    end = 0
    for position, piece in sorted(pieces, key=lambda p: p[0]):
        if position != end:
            raise AssertionError(f"unit {unit}: pieces do not tile (at {position}, expected {end})")
        flat[position : position + len(piece)] = piece
        end = position + len(piece)
        covered += len(piece)
    if covered != size:
        raise AssertionError(f"unit {unit}: got {covered} tokens, expected {size}")
    return flat.reshape(stop_row - start_row, layout.seq_len)


def pack_stream(documents_ids, bos_id, eos_id, seq_len):
    """Reference packing of a whole corpus in one process: int32[N, T].

    Used by tests and the benchmark to check the distributed spine.
    """
    parts = [pack_document(ids, bos_id, eos_id) for ids in documents_ids]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    num_rows = len(stream) // seq_len
    return stream[: num_rows * seq_len].reshape(num_rows, seq_len)
