"""An exact two-stage top-k over vocabulary groups: the same ids and values as lax.top_k.

Where the time goes (bench/extract_bench.py --breakdown, CPU): XLA's CPU
TopK is a single-threaded partial_sort costing a few ns per vocabulary entry
per row, so at V = 262,144 it is most of the extraction step. The two-stage
form runs it on far fewer entries:

  1. cut the V ids into G = ceil(V / g) contiguous groups of g and take each
     group's maximum (a vectorised reduction);
  2. lax.top_k over the G group maxima picks the k best groups;
  3. lax.top_k over those k·g entries, laid out in ascending id order.

Why it is exact. Order entries by (value descending, id ascending), the
order lax.top_k returns (ties towards the lower id). A group's best entry
under it has the group's maximum value; two groups with equal maxima are
ordered by group index, which is id order, so stage 2 (lax.top_k's own tie
rule on the maxima) picks the k groups with the best best-entries. An entry
in an unpicked group U is beaten by U's best entry, which is beaten by the
best entries of all k picked groups: k entries beat it, so it is not in the
top-k. Every top-k entry is therefore among the candidates, and stage 3 sees
them in id order, so it breaks ties exactly as a top-k over all V would.

The group maximum is taken on the float's total-order integer key (the one
XLA's CPU TopK compares: -0.0 below +0.0, NaN by its bits), so the group
order agrees with the top-k's order bit for bit, and the returned values are
the original logits (no arithmetic touches them).

Cost: ~G + k·g entries through TopK instead of V; g ≈ sqrt(V / k) minimises
it. Measured on the 2-core CPU (128 rows, k=128, CPU ms): V=8,192 lax 6.2
vs g=8 7.2 (no gain: TopK's fixed cost per row dominates); V=262,144 lax
80.5 vs g=16 34.6.
"""

import jax
import jax.numpy as jnp


def _int_dtype(dtype):
    bits = jnp.dtype(dtype).itemsize * 8
    return {16: jnp.int16, 32: jnp.int32}[bits]


def total_order_key(x: jax.Array) -> jax.Array:
    """The signed integer whose order is the float's total order (a bijection)."""
    b = jax.lax.bitcast_convert_type(x, _int_dtype(x.dtype))
    mask = jnp.iinfo(b.dtype).max
    return b ^ ((b >> (b.dtype.itemsize * 8 - 1)) & mask)


def from_total_order_key(key: jax.Array, dtype) -> jax.Array:
    """Inverse of total_order_key."""
    mask = jnp.iinfo(key.dtype).max
    return jax.lax.bitcast_convert_type(key ^ ((key >> (key.dtype.itemsize * 8 - 1)) & mask), dtype)


def grouped_top_k(x_XxV: jax.Array, k: int, group: int) -> tuple[jax.Array, jax.Array]:
    """lax.top_k(x, k) computed in two stages over groups of `group` ids.

    Args:
        x_XxV: values [..., V] (float32, bfloat16 or float16).
        k: entries kept, k < ceil(V / group).
        group: ids per group, ≥ 1.

    Returns:
        (values_XxK, ids_XxK int32), bit-identical to lax.top_k(x_XxV, k).
    """
    v = x_XxV.shape[-1]
    num_groups = -(-v // group)
    lead = x_XxV.shape[:-1]
    pad = num_groups * group - v
    if pad:
        # -inf at ids past V: never selected, since k ≤ V real entries rank
        # at or above it and win ties by their lower ids.
        x_XxV = jnp.concatenate([x_XxV, jnp.full(lead + (pad,), -jnp.inf, x_XxV.dtype)], -1)
    x_XxGxg = x_XxV.reshape(lead + (num_groups, group))
    best_XxG = from_total_order_key(total_order_key(x_XxGxg).max(-1), x_XxV.dtype)
    _, groups_XxK = jax.lax.top_k(best_XxG, k)
    groups_XxK = jnp.sort(groups_XxK, axis=-1)  # candidates in ascending id order
    cand_XxKxg = jnp.take_along_axis(x_XxGxg, groups_XxK[..., None], axis=-2)
    values_XxK, pos_XxK = jax.lax.top_k(cand_XxKxg.reshape(lead + (k * group,)), k)
    ids_XxK = jnp.take_along_axis(groups_XxK, pos_XxK // group, -1) * group + pos_XxK % group
    return values_XxK, ids_XxK.astype(jnp.int32)


def auto_group(backend: str, vocab: int, k: int) -> int:
    """The group size picked when none is given: 0 (plain lax.top_k) or g.

    Two-stage only where it was measured to pay: on CPU from V = 65,536 (see
    the module doc). Elsewhere (GPU, TPU) it is unmeasured, so lax.top_k.
    """
    group = 16
    if backend == "cpu" and vocab >= 65_536 and -(-vocab // group) > k:
        return group
    return 0
