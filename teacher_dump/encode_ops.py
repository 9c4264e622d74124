"""jnp twins of numpy's float arithmetic, bit for bit: what the device encoders are built of.

The store's codecs (store/*_codecs.py, store/lean.py) write their jnp
encoders against this module, handed to them as ``ops`` by encode.py
(``ops.jnp`` is jax.numpy): the store package never imports JAX.

Each function gives the bytes numpy gives on the host (tested on CPU, jax
0.10.2), against a rewrite XLA would otherwise make:

* ``pairwise_sum``: numpy sums with its pairwise summation (blocks of 8
  strided accumulators up to 128 elements, halves above), XLA with its own
  reduction tree; the tree is spelled out as elementwise adds, which XLA
  never reassociates. ``rms`` also keeps the squares from being fused into
  those adds as FMAs (XLA's CPU backend contracts them: 18% of RMS values an
  ulp off, measured), since numpy rounds every square.
* ``divide``: XLA's algebraic simplifier turns ``a / broadcast(b)`` into
  ``a * broadcast(1 / b)``, one ulp off for ~20% of elements (measured); the
  broadcast is hidden behind an optimisation barrier, so the divide stays a
  correctly rounded IEEE divide.
* ``top_n_channels``: ``lax.top_k``'s order, ties towards the lower channel
  (store.topn applies the same rule on its tie rows; argpartition alone would not).
* ``fwht``: the Hadamard rotation as add/sub butterflies in store.lean's order.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

F32 = jnp.float32
_LEAF = 128  # numpy's PW_BLOCKSIZE: below it, 8 strided accumulators; above, split in halves
_LANES = 8


def _leaves(lo: int, n: int) -> list:
    """numpy's pairwise tree over [lo, lo + n) as nested pairs of (lo, n) leaves."""
    if n <= _LEAF:
        return [lo, n]
    half = n // 2
    half -= half % _LANES
    return [_leaves(lo, half), _leaves(lo + half, n - half)]


def _leaf_sum(x, lo, n):
    # numpy for n <= 128: 8 strided accumulators, combined as a tree, the tail added in order.
    if n < _LANES:
        total = jnp.zeros(x.shape[:-1], x.dtype)
        for i in range(lo, lo + n):
            total = total + x[..., i]
        return total
    m = n - n % _LANES
    lanes = x[..., lo : lo + m].reshape(*x.shape[:-1], m // _LANES, _LANES)
    r = lanes[..., 0, :]
    for i in range(1, m // _LANES):
        r = r + lanes[..., i, :]
    total = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + (
        (r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7])
    )
    for i in range(lo + m, lo + n):
        total = total + x[..., i]
    return total


def _balanced(tree, depth):
    """Leaf width if ``tree`` is a full binary tree of ``depth`` levels of equal leaves, else None."""
    if depth == 0:
        return tree[1] if isinstance(tree[0], int) else None
    if isinstance(tree[0], int):
        return None
    a, b = _balanced(tree[0], depth - 1), _balanced(tree[1], depth - 1)
    return a if a is not None and a == b else None


def pairwise_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis in numpy's pairwise order (bit-identical to ``np.add.reduce``).

    numpy (PW_BLOCKSIZE 128) splits the row in halves (rounded down to a
    multiple of 8) down to leaves of <= 128 elements, sums a leaf with 8
    strided accumulators combined as a tree, and adds the halves. The same
    adds are spelled out here as elementwise ops, which XLA never reorders.
    When the leaves are equal (D = 2560: 32 leaves of 80) they are summed
    side by side as one [..., leaves, width] array, which is ~10x faster on CPU.

    Args:
        x: [..., n] float array.

    Returns:
        [...] the sum, same dtype.
    """
    n = x.shape[-1]
    tree = _leaves(0, n)
    depth = 0
    while not isinstance(_first_leaf(tree, depth), int):
        depth += 1
    width = _balanced(tree, depth)
    if width is None:

        def walk(t):
            return _leaf_sum(x, *t) if isinstance(t[0], int) else walk(t[0]) + walk(t[1])

        return walk(tree)
    parts = _leaf_sum(x.reshape(*x.shape[:-1], n // width, width), 0, width)  # [..., leaves]
    while parts.shape[-1] > 1:  # adjacent pairs: the tree's levels, bottom up
        parts = parts[..., 0::2] + parts[..., 1::2]
    return parts[..., 0]


def _first_leaf(tree, depth):
    for _ in range(depth):
        tree = tree[0]
    return tree[0]


def divide(num: jax.Array, den) -> jax.Array:
    """``num / den`` (den broadcast to num), correctly rounded like numpy's divide (see module doc)."""
    den_full = lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(den, num.dtype), num.shape))
    return num / den_full


def mean_square(x_XxD: jax.Array) -> jax.Array:
    """``np.mean(np.square(x), axis=-1, dtype=np.float32)``, bit for bit (float32 x)."""
    # max(x*x, 0) is x*x (NaN stays NaN), but it keeps the multiply from being contracted
    # into the adds of the sum as an FMA, which XLA's CPU backend does otherwise (18% of
    # RMS values off by an ulp, measured): numpy rounds every square.
    sq = jnp.maximum(x_XxD * x_XxD, F32(0.0))
    return divide(pairwise_sum(sq), np.float32(x_XxD.shape[-1]))


def rms(x_XxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token RMS (float32) as ``store.profiles``, and the same with 0 replaced by 1 (safe divisor)."""
    r = jnp.sqrt(mean_square(x_XxD))
    return r, jnp.where(r > 0, r, F32(1.0))


def top_n_channels(a_XxD: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """The ``n`` largest values of the last axis, ties towards the lower channel (``lax.top_k``'s order).

    The top-k runs on a 2-D [tokens, D] view: XLA's CPU backend lowers a 2-D
    top-k to its TopK kernel, a 3-D one whose values feed an elementwise op
    to a full sort of D (30x slower, measured). (A pre-selection on blocks
    of 64 channels, as store.profiles does, is slower still: the CPU gather
    of the blocks costs more than the top-k.)

    Args:
        a_XxD: [..., D] float values (|y|).
        n: how many, <= D.

    Returns:
        (ascending channel indices int32 [..., n], bool mask [..., D] of them).
    """
    lead, D = a_XxD.shape[:-1], a_XxD.shape[-1]
    vals, idx = lax.top_k(a_XxD.reshape(-1, D), n)
    vals, idx = vals.reshape(*lead, n), idx.reshape(*lead, n)
    # The last of top_k's order is the n-th value and, among the selected channels
    # equal to it, the highest one: the selection is everything before it in that order.
    thr, last = vals[..., -1:], idx[..., -1:]
    chan = jnp.arange(D, dtype=idx.dtype)
    outlier = (a_XxD > thr) | ((a_XxD == thr) & (chan <= last))
    return jnp.sort(idx, axis=-1), outlier


def fwht(v_XxGxb: jax.Array) -> jax.Array:
    """``v @ H_b`` for the Sylvester Hadamard H_b (unnormalised), as log2(b) add/sub butterflies.

    Stage h = 1, 2, ..., b/2 maps each pair (i, i + h) of a block of 2h to
    (v_i + v_{i+h}, v_i - v_{i+h}): exact-order adds, so the same bytes on any
    backend (a matmul's accumulation order is the BLAS library's).
    """
    b = v_XxGxb.shape[-1]
    lead = v_XxGxb.shape[:-1]
    h = 1
    while h < b:
        pairs = v_XxGxb.reshape(*lead, b // (2 * h), 2, h)
        lo, hi = pairs[..., 0, :], pairs[..., 1, :]
        v_XxGxb = jnp.stack([lo + hi, lo - hi], axis=-2).reshape(*lead, b)
        h *= 2
    return v_XxGxb
