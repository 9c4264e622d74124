"""Bit-packed vocabulary ids (compact and lean profiles): the numpy codec and its jnp twin.

A position's n ids (n = K top-k slots or S sampled slots) are one
little-endian bit stream of ``bits = max(1, ceil(log2 V))`` bits per id: id j
occupies stream bits [j*bits, (j+1)*bits), least significant bit first, and
stream bit i is bit (i % 8) of byte i // 8; the stream is zero-padded to
whole bytes. Stored as uint8 [..., ceil(n*bits/8)], which is what
``np.packbits(..., bitorder="little")`` produces, so any reader decodes it
with ``np.unpackbits(..., bitorder="little")`` (``unpack`` below is exactly
that). At V = 262,144 an id costs 18 bits instead of int32's 32.

The jnp twins (``pack_jnp``, ``unpack_jnp``) sit beside the numpy codec and
take the ``jax.numpy`` module as an argument: the device encoder
(teacher_dump.encode) and the train step's decoder (trainer.training.decode)
pass it in, so this package never imports JAX.
"""

from types import ModuleType
from typing import Any

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


# --- the jnp twins (the device encoder and the train step's decoder pass ``jnp``: this package never imports JAX) ---


def pack_jnp(jnp: ModuleType, ids_xN: Any, bits: int) -> Any:
    """``pack`` in jnp, byte-identical: uint8 [..., packed_width(n, bits)] of ids < 2**bits.

    Integer ops only (each id's low ``bits`` bits laid end to end, 8 stream
    bits OR-ed into a byte), so exact on any backend.
    """
    lead, n = ids_xN.shape[:-1], ids_xN.shape[-1]
    u = ids_xN.astype(jnp.uint32)
    bit_XxNxB = ((u[..., None] >> jnp.arange(bits, dtype=jnp.uint32)) & 1).astype(jnp.uint8)
    stream = bit_XxNxB.reshape(*lead, n * bits)
    pad = -(n * bits) % 8
    stream = jnp.pad(stream, [(0, 0)] * len(lead) + [(0, pad)])
    bytes_XxMx8 = stream.reshape(*lead, (n * bits + pad) // 8, 8)
    # Distinct bits: the sum is the OR, at most 255.
    return (bytes_XxMx8 << jnp.arange(8, dtype=jnp.uint8)).sum(axis=-1, dtype=jnp.uint8)


def unpack_jnp(jnp: ModuleType, packed_xW: Any, n: int, bits: int) -> Any:
    """``unpack`` in jnp, bit-identical: int32 [..., n].

    The byte offsets are static, so each id is a gather of the 5 bytes that
    can hold it (bits <= 32, shift <= 7), a little-endian combine and a
    shift: no 8x expansion into single bits.

    Raises:
        CorruptStoreError: the packed width does not match n ids of ``bits`` bits.
    """
    width = packed_xW.shape[-1]
    if width != packed_width(n, bits):
        raise errors.CorruptStoreError(
            f"packed ids have {width} bytes per position, {n} ids of {bits} bits need {packed_width(n, bits)}; "
            "the store's manifest and arrays disagree: re-dump the store"
        )
    start_n = np.arange(n) * bits
    byte0_n, shift_n = start_n // 8, (start_n % 8).astype(np.uint32)
    x = packed_xW.astype(jnp.uint32)
    # Zero bytes past the end: the last ids' 5-byte windows may reach past it.
    x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (5,), jnp.uint32)], axis=-1)
    b = [jnp.take(x, byte0_n + i, axis=-1) for i in range(5)]
    value = (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >> shift_n
    # Bits from the fifth byte (only when shift + bits > 32); a shift by 32
    # would be out of range, so the shift-0 ids take none of it.
    value = value | jnp.where(shift_n > 0, b[4] << ((32 - shift_n) % 32), jnp.uint32(0))
    mask = np.uint32(0xFFFFFFFF) if bits == 32 else np.uint32((1 << bits) - 1)
    return (value & mask).astype(jnp.int32)


def stored_ids_jnp(jnp: ModuleType, stored_xW: Any, n: int, bits: int) -> Any:
    """int32 ids [..., n] of a stored id array: ``bits`` 0 = stored as uint16/int32, else packed."""
    return stored_xW.astype(jnp.int32) if bits == 0 else unpack_jnp(jnp, stored_xW, n, bits)
