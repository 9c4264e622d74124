"""The ``lean`` profile: ~935 B/token at T=2048, D=2560, V=262,144 with 12 sampled draws and no top-k.

Activations (``hidden/<l>``, uint8 [N,T,ceil(D/3)], no zstd: 6-level codes
are near their entropy, zstd saved 73-85 B/token of 854 and made the loader's
read several times slower; stored raw, a read is a pread into the output)
of x [T, D] float32:

1. y = x / rms(x), the per-token RMS exactly as exact/compact compute it,
   stored as ``hidden_aux/<l>/rms`` float32 [N,T].
2. A fixed random rotation: b = the largest power of two dividing D, capped at
   512 (``hidden_group`` in the manifest), G = D / b groups; signs s in
   {+1,-1}^D (``hidden_signs``); r = H_b(y * s) per group of b channels,
   H_b the Sylvester Hadamard matrix scaled by 1/sqrt(b) (orthogonal and
   symmetric: its own inverse). The rotation spreads the residual stream's
   massive channels over the group, so the group is close to Gaussian and a
   6-level grid fits all of it (compact needs explicit outlier channels).
   Computed as float32 butterflies (a, b) -> (a + b, a - b) at distances
   h = 1, 2, ..., b/2, then one multiply by float32(1/sqrt(b)), so a device
   encoder doing the same adds in the same order writes the same bytes.
3. Per token and group: step = float16(sqrt(m) * float32(LEAN_STEP)) in
   float32, m = ``np.mean(np.square(r), axis=-1, dtype=np.float32)``: every
   square rounded to float32, summed in numpy's pairwise order (a contiguous
   last axis: blocks of 128 by 8 strided accumulators), divided by b. That
   order is spelled out by teacher_dump/encode_ops.mean_square, so the
   device encoder writes the same steps (a float64 sum cannot be reproduced
   in a jitted step without x64: ~1e-4 of steps were a float16 ulp apart).
   A zero step is stored as 1. ``hidden_aux/<l>/step`` float16 [N,T,G].
4. Code c = clip(floor(r / step) + 3, 0, 5): a 6-level midrise grid, value
   (c - 2.5) * step. LEAN_STEP is the MSE-optimal step of that grid for
   N(0, 1) (tests/store/test_store_lean.py finds the optimum independently).
5. Three codes per byte: byte = c[3i] + 6 c[3i+1] + 36 c[3i+2], channels past D
   padded with code 0.

Decode: c_j = (byte // 6**j) % 6; r = (c - 2.5) * step; y = H_b(r) * s;
x = y * rms (a normalized read stops at y). Top-k (k > 0) is stored as in
compact; ids (top-k and sampled) are bit-packed (store/bitpack.py).

The jnp twins sit beside the numpy codec (the JAX side is passed in, as in
store/hidden_codecs.py): ``encode_jnp`` writes ``encode``'s bytes (the same
butterflies and numpy's pairwise mean of squares, teacher_dump/encode_ops.py),
``decode_jnp`` gives ``decode``'s normalized y bit for bit.
"""

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from store import errors
from store.layout import ArraySpec

LEAN_STEP = 0.73343  # MSE-optimal step of a 6-level uniform quantizer of N(0, 1) (Max 1960: 0.7334)
LEVELS = 6
MAX_GROUP = 512
MIN_GROUP = 16  # below this the per-group float16 step costs more than the codes it scales
SIGNS_SEED = 12
_BLOCK_TOKENS = 4096  # tokens per encode/decode block: bounds the float32 temporaries
# LUT[byte] = the three code values (c - 2.5) a byte packs (bytes > 215 never occur).
_LUT = np.array([[(b // 6**j) % 6 - 2.5 for j in range(3)] for b in range(256)], np.float32)


def group_size(D: int) -> int:
    """b: the largest power of two dividing D, capped at MAX_GROUP."""
    return min(D & -D, MAX_GROUP)


def check_dim(D: int) -> None:
    """Raises StoreInputError when the lean rotation cannot use groups of >= MIN_GROUP channels."""
    if D and group_size(D) < MIN_GROUP:
        raise errors.StoreInputError(
            f"invalid StoreSchema: profile 'lean' needs hidden_dim divisible by {MIN_GROUP} (rotation groups), "
            f"got {D}; use the compact profile for this width"
        )


def dim_of(codes_width: int, groups: int) -> int:
    """D of stored arrays with ``codes_width`` = ceil(D/3) bytes and ``groups`` steps per token.

    Unique: D is a multiple of MIN_GROUP, and only one of 3W-2..3W is.
    """
    for D in (3 * codes_width, 3 * codes_width - 1, 3 * codes_width - 2):
        if D > 0 and D % MIN_GROUP == 0 and D // group_size(D) == groups:
            return D
    raise errors.CorruptStoreError(
        f"lean arrays with {codes_width} code bytes and {groups} step groups per token fit no hidden_dim; "
        "the store is damaged: run `python -m store verify` on it"
    )


def signs(D: int) -> np.ndarray:
    """The fixed signs s (int8 +-1 [D]); the manifest's ``hidden_signs`` list is the truth for readers."""
    return (1 - 2 * np.random.default_rng(SIGNS_SEED).integers(0, 2, D)).astype(np.int8)


def hadamard_rotate(v_MxGxB: np.ndarray) -> np.ndarray:
    """H_b v per group (last axis b, a power of two), scaled by float32(1/sqrt(b)); float32, fixed order."""
    b = v_MxGxB.shape[-1]
    lead = v_MxGxB.shape[:-1]
    a = np.array(v_MxGxB, dtype=np.float32).reshape(-1, b)
    out = np.empty_like(a)
    h = 1
    while h < b:
        x = a.reshape(-1, b // (2 * h), 2, h)
        o = out.reshape(x.shape)
        np.add(x[:, :, 0], x[:, :, 1], out=o[:, :, 0])
        np.subtract(x[:, :, 0], x[:, :, 1], out=o[:, :, 1])
        a, out = out, a
        h *= 2
    a *= np.float32(1.0 / np.sqrt(b))
    return a.reshape(*lead, b)


def encode(x_RxTxD: np.ndarray, rms_safe_RxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [R,T,ceil(D/3)], step float16 [R,T,G]) of the activations."""
    lead, D = x_RxTxD.shape[:-1], x_RxTxD.shape[-1]
    b = group_size(D)
    G, W = D // b, (D + 2) // 3
    s = signs(D).astype(np.float32)
    x = x_RxTxD.reshape(-1, D)
    safe = rms_safe_RxT.reshape(-1)
    codes = np.zeros((x.shape[0], 3 * W), np.uint8)
    step = np.empty((x.shape[0], G), np.float16)
    for a in range(0, x.shape[0], _BLOCK_TOKENS):
        y = np.divide(x[a : a + _BLOCK_TOKENS], safe[a : a + _BLOCK_TOKENS, None], dtype=np.float32)
        r = hadamard_rotate((y * s).reshape(-1, G, b))
        ms = np.mean(
            np.square(r), axis=-1, dtype=np.float32
        )  # pairwise float32: see the module doc
        st = (np.sqrt(ms) * np.float32(LEAN_STEP)).astype(np.float16)
        st[st == 0] = 1.0
        step[a : a + _BLOCK_TOKENS] = st
        np.divide(r, st.astype(np.float32)[..., None], out=r)
        np.floor(r, out=r)
        r += 3
        np.clip(r, 0, LEVELS - 1, out=r)
        codes[a : a + _BLOCK_TOKENS, :D] = r.reshape(-1, D)
    c = codes.reshape(-1, W, 3).astype(np.uint16)
    packed = (c[..., 0] + 6 * c[..., 1] + 36 * c[..., 2]).astype(np.uint8)
    return packed.reshape(*lead, W), step.reshape(*lead, G)


def decode(
    codes_RxTxW: np.ndarray,
    step_RxTxG: np.ndarray,
    D: int,
    dtype: npt.DTypeLike,
    rms_RxT: np.ndarray | None = None,
) -> np.ndarray:
    """y (``rms_RxT`` None) or x = y * rms, in ``dtype``."""
    lead, W = codes_RxTxW.shape[:-1], codes_RxTxW.shape[-1]
    b = group_size(D)
    G = D // b
    s = signs(D).astype(np.float32)
    codes = codes_RxTxW.reshape(-1, W)
    step = step_RxTxG.reshape(-1, G)
    rms = None if rms_RxT is None else rms_RxT.reshape(-1)
    out = np.empty((codes.shape[0], D), dtype)
    for a in range(0, codes.shape[0], _BLOCK_TOKENS):
        r = _LUT[codes[a : a + _BLOCK_TOKENS]].reshape(-1, 3 * W)[:, :D].reshape(-1, G, b)
        r *= step[a : a + _BLOCK_TOKENS].astype(np.float32)[..., None]
        y = hadamard_rotate(r).reshape(-1, D)
        y *= s
        if rms is not None:
            y *= rms[a : a + _BLOCK_TOKENS, None]
        out[a : a + _BLOCK_TOKENS] = y
    return out.reshape(*lead, D)


def encode_jnp(
    ops: ModuleType, x_XxD: Any, signs_D: npt.ArrayLike, lean_step: float
) -> tuple[Any, Any, Any]:
    """``encode`` in jnp, byte-identical: (codes uint8 [..., ceil(D/3)], rms float32 [...], step float16 [..., G]).

    Args:
        ops: teacher_dump.encode_ops (``ops.jnp`` is jax.numpy; numpy's float arithmetic bit for bit).
        x_XxD: [..., D] activations.
        signs_D: the +-1 rotation signs (length D; ``signs(D)`` for a store).
        lean_step: the quantiser's step in units of the group RMS (LEAN_STEP for a store).
    """
    jnp = ops.jnp
    F32 = jnp.float32
    D = x_XxD.shape[-1]
    b = group_size(D)
    G = D // b
    lead = x_XxD.shape[:-1]
    x = x_XxD.astype(F32)
    r, safe = ops.rms(x)
    y = ops.divide(x, safe[..., None])
    v = (y * jnp.asarray(signs_D, F32)).reshape(*lead, G, b)
    rot = ops.fwht(v) * np.float32(1.0 / np.sqrt(b))  # the scaling as hadamard_rotate writes it
    step = (jnp.sqrt(ops.mean_square(rot)) * F32(lean_step)).astype(jnp.float16)
    step = jnp.where(step > 0, step, jnp.float16(1.0))
    code = jnp.clip(jnp.floor(ops.divide(rot, step.astype(F32)[..., None])) + 3, 0, LEVELS - 1)
    code = code.astype(jnp.uint8).reshape(*lead, D)
    code = jnp.pad(code, [(0, 0)] * len(lead) + [(0, -D % 3)]).reshape(*lead, -(-D // 3), 3)
    packed = code[..., 0] + jnp.uint8(6) * code[..., 1] + jnp.uint8(36) * code[..., 2]
    return packed, r, step


# 2c - 5 for the three codes a byte packs (c_j = (byte // 6**j) % 6); bytes > 215 never occur.
_LUT_2C_MINUS_5 = np.array(
    [[2 * ((v // 6**j) % 6) - 5 for j in range(3)] for v in range(256)], np.float32
)


def sylvester(b: int) -> np.ndarray:
    """The unscaled Sylvester Hadamard matrix H_b (H_1 = [1], H_2n = [[H, H], [H, -H]])."""
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h


def decode_jnp(jnp: ModuleType, codes_xP: Any, step_xG: Any, signs: Sequence[int]) -> Any:
    """``decode``'s normalized y in jnp, bit for bit: float32 [..., D], D = len(signs).

    Computed as H_b @ (2c - 5) times step/2: a matmul of small integers
    (|2c - 5| <= 5, H_b entries +-1, both exact in bfloat16; sums |.| <= 5 b
    exact in the float32 accumulator whatever its order), so it is exact on
    every backend, tensor cores included. And step/2 * integer is the float32
    value numpy's float32 butterflies also reach (every partial sum there is
    an 11-bit step times an integer below 2**12, so none rounds); then the
    one rounding multiply by float32(1/sqrt(b)) both sides share.

    Args:
        jnp: jax.numpy.
        codes_xP: uint8 [..., ceil(D/3)] stored codes.
        step_xG: float16 [..., G] stored steps.
        signs: the manifest's ``hidden_signs`` (+1/-1, length D).
    """
    D = len(signs)
    b = group_size(D)
    G = D // b
    m = jnp.take(
        jnp.asarray(_LUT_2C_MINUS_5, jnp.bfloat16), codes_xP.astype(jnp.int32), axis=0
    )  # [..., P, 3]
    m = m.reshape(codes_xP.shape[:-1] + (-1,))[..., :D]  # channels past D: padding
    m = m.reshape(m.shape[:-1] + (G, b))
    h = jnp.einsum(
        "...gb,bc->...gc",
        m,
        jnp.asarray(sylvester(b), jnp.bfloat16),
        preferred_element_type=jnp.float32,
    )  # exact integers
    r = h * (step_xG.astype(jnp.float32)[..., None] * jnp.float32(0.5))
    y = r * np.float32(1.0 / np.sqrt(b))
    y = y.reshape(y.shape[:-2] + (D,))
    return y * jnp.asarray(np.asarray(signs, np.float32))


def hidden_specs(layer_name: str, aux: Callable[[str], str], T: int, D: int) -> list[ArraySpec]:
    """The stored arrays of one layer (``aux(what)`` names its side arrays)."""
    return [
        ArraySpec(layer_name, (T, (D + 2) // 3), "uint8", ("pos", "d_codes3")),
        ArraySpec(aux("rms"), (T,), "float32", ("pos",)),
        ArraySpec(aux("step"), (T, D // group_size(D)), "float16", ("pos", "group")),
    ]


def describe(D: int) -> dict:
    """Manifest entries of the lean activation encoding."""
    return {
        "hidden/<l>": (
            "uint8, 3 codes per byte: c_j = (byte // 6**j) % 6 for channels 3i+j (channels >= D "
            "are padding); r = (c - 2.5) * step[group of the channel]"
        ),
        "hidden_aux/<l>/rms": "float32 per-token RMS of x",
        "hidden_aux/<l>/step": "float16 per-token, per-group step of the 6-level grid",
        "hidden_rotation": (
            "per group g of hidden_group channels (channels g*b..(g+1)*b-1): "
            "y = (r_g @ H_b / sqrt(b)) * hidden_signs[channels], H_b Sylvester Hadamard "
            "(H_1 = [1], H_2n = [[H, H], [H, -H]]); then x = y * rms[..., None] "
            "(y alone is the normalized activation x / rms)"
        ),
        "hidden_group": group_size(D) if D else 0,
        "hidden_signs": signs(D).tolist() if D else [],
        "lean_step": LEAN_STEP,
        "lean_step_rule": "step = float16(float32(sqrt(m)) * float32(lean_step)), m the float32 mean over the "
        "group of float32(r**2) (numpy: np.mean(np.square(r), axis=-1, dtype=np.float32)), a "
        "zero step stored as 1; code = clip(floor(r / step) + 3, 0, 5), r the rotated "
        "normalized activation",
    }
