"""Bit-packed vocabulary ids (compact and lean profiles; numpy only).

A position's n ids (n = K top-k slots or S sampled slots) are one
little-endian bit stream of ``bits = max(1, ceil(log2 V))`` bits per id: id j
occupies stream bits [j*bits, (j+1)*bits), least significant bit first, and
stream bit i is bit (i % 8) of byte i // 8; the stream is zero-padded to
whole bytes. Stored as uint8 [..., ceil(n*bits/8)], which is what
``np.packbits(..., bitorder="little")`` produces, so any reader decodes it
with ``np.unpackbits(..., bitorder="little")`` (``unpack`` below is exactly
that). At V = 262,144 an id costs 18 bits instead of int32's 32.
"""

import numpy as np
import numpy.typing as npt

from store import errors

# Positions converted per block: bounds the bit-per-byte temporaries
# (positions * n * 32 bytes) whatever the unit size.
_BLOCK_POSITIONS = 1 << 14


def bits_for(vocab_size: int) -> int:
    """Bits per packed id: max(1, ceil(log2 V)) (V=262,144 -> 18; 32,000 -> 15; 2,048 -> 11)."""
    return max(1, (int(vocab_size) - 1).bit_length())


def packed_width(n: int, bits: int) -> int:
    """Bytes per position of n packed ids."""
    return (n * bits + 7) // 8


def pack(ids_xN: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., packed_width(n, bits)] of non-negative ids < 2**bits (checked by the caller)."""
    lead, n = ids_xN.shape[:-1], ids_xN.shape[-1]
    width = packed_width(n, bits)
    flat = np.ascontiguousarray(ids_xN.reshape(-1, n), dtype="<u4")
    out = np.empty((flat.shape[0], width), np.uint8)
    for a in range(0, flat.shape[0], _BLOCK_POSITIONS):
        block = flat[a : a + _BLOCK_POSITIONS]
        # Each id's 32 bits, LSB first; keep the low `bits` and lay them end to end.
        stream = np.unpackbits(block.view(np.uint8).reshape(-1, n, 4), axis=-1, bitorder="little")
        stream = stream[..., :bits].reshape(block.shape[0], n * bits)
        out[a : a + block.shape[0]] = np.packbits(stream, axis=-1, bitorder="little")
    return out.reshape(*lead, width)


def unpack(packed_xW: np.ndarray, n: int, bits: int, dtype: npt.DTypeLike = np.int32) -> np.ndarray:
    """Inverse of ``pack``: ids [..., n] in ``dtype``.

    Raises:
        CorruptStoreError: the packed width does not match n ids of ``bits`` bits.
    """
    lead, width = packed_xW.shape[:-1], packed_xW.shape[-1]
    if width != packed_width(n, bits):
        raise errors.CorruptStoreError(
            f"packed ids have {width} bytes per position, {n} ids of {bits} bits need {packed_width(n, bits)}; "
            "the store's manifest and arrays disagree: re-dump the store"
        )
    flat = np.ascontiguousarray(packed_xW.reshape(-1, width))
    out = np.empty((flat.shape[0], n), dtype)
    for a in range(0, flat.shape[0], _BLOCK_POSITIONS):
        block = flat[a : a + _BLOCK_POSITIONS]
        m = block.shape[0]
        stream = np.unpackbits(block, axis=-1, bitorder="little")[:, : n * bits].reshape(m, n, bits)
        word = np.zeros((m, n, 32), np.uint8)
        word[..., :bits] = stream
        out[a : a + m] = np.packbits(word, axis=-1, bitorder="little").view("<u4").reshape(m, n)
    return out.reshape(*lead, n)
