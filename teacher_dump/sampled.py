"""Sampled logits: S draws per position from the teacher's full softmax, on the device.

The store's `sampled/*` arrays (store/sampled.py, "Sparse Logit Sampling", arXiv
2503.16870): per position, the distinct ids drawn, how many of the S draws
gave each, and the teacher's log-prob of each. Training weights a drawn id by
count / S, an unbiased estimate of the forward KL at tau = 1.

Draws. Stratified inverse-CDF sampling: draw s uses u_s = (s + U_s) / S with
U_s ~ U[0, 1) i.i.d. Draw s alone follows p restricted to its stratum of the
CDF, but the strata tile [0, 1), so E[count(x)] = S · p(x) exactly and the
weights count / S are unbiased for p, as with i.i.d. draws, with a variance
never larger (each stratum of mass 1/S yields exactly one draw, so an id
whose CDF interval holds m whole strata gets at least m draws; one of mass
>= 2/S is always drawn). The u are sorted, so the drawn ids come out ascending.

Keys. U depends only on (global store row, position): the key is
`fold_in(fold_in(key(SAMPLE_SEED), row), position)` with the threefry2x32
implementation named explicitly, so a row re-dumped in another batch, on
another worker or after a resume gets the same draws.

Cost. The inverse CDF never forms a float32 cumsum over all V entries of a
position: the vocabulary is cut into blocks of VOCAB_BLOCK ids, the block
masses are summed and cumulated ([X, V / VOCAB_BLOCK]), a draw picks its
block there and is resolved by a cumsum over that one block. Float32
rounding can make a draw's residual exceed its block's cumulated mass by an
ulp; the draw then takes the block's last id with non-zero probability, so a
zero-probability id (logit -inf) is never drawn.
"""

import jax
import jax.numpy as jnp

# The fixed seed of every store's draws. Part of the format: changing it
# changes the bytes a re-dump writes (a resume would no longer match).
SAMPLE_SEED = 12
# Vocabulary ids per block of the two-level inverse CDF.
VOCAB_BLOCK = 128
# The store keeps counts as uint8 (store/sampled.py).
MAX_SAMPLES = 255


def stratified_uniforms(rows_X: jax.Array, positions_X: jax.Array, samples: int) -> jax.Array:
    """The S sorted stratified uniforms of each (row, position).

    Args:
        rows_X: global store row of each token (int32, any shape X).
        positions_X: position of each token in its row (int32, shape X).
        samples: S ≥ 1.

    Returns:
        u_XxS float32 in [0, 1] (1.0 only by float32 rounding of the last
        stratum), ascending along S.
    """
    base = jax.random.key(SAMPLE_SEED, impl="threefry2x32")

    def one(row, position):
        key = jax.random.fold_in(jax.random.fold_in(base, row), position)
        u_S = jax.random.uniform(key, (samples,), jnp.float32)
        return (jnp.arange(samples, dtype=jnp.float32) + u_S) / samples

    flat = jax.vmap(one)(rows_X.reshape(-1), positions_X.reshape(-1))
    return flat.reshape(rows_X.shape + (samples,))


def _first_above(cdf_XxN: jax.Array, v_XxS: jax.Array) -> jax.Array:
    """Per draw, the first index of the row's cdf that exceeds v (N if none)."""
    return jnp.sum(cdf_XxN[..., None, :] <= v_XxS[..., None], axis=-1, dtype=jnp.int32)


def _last_positive(mass_XxN: jax.Array) -> jax.Array:
    """Index of the last entry with non-zero mass (0 if none)."""
    n = mass_XxN.shape[-1]
    return jnp.max(jnp.where(mass_XxN > 0, jnp.arange(n, dtype=jnp.int32), 0), axis=-1)


def inverse_cdf(logits_XxV: jax.Array, lse_X: jax.Array, u_XxS: jax.Array) -> jax.Array:
    """Ids drawn from softmax(logits) at the uniforms u, by a two-level inverse CDF.

    Args:
        logits_XxV: float32 logits.
        lse_X: their logsumexp.
        u_XxS: uniforms in [0, 1].

    Returns:
        ids_XxS int32 in [0, V), each with non-zero probability.
    """
    v = logits_XxV.shape[-1]
    num_blocks = -(-v // VOCAB_BLOCK)
    pad = num_blocks * VOCAB_BLOCK - v
    if pad:  # padding ids get logit -inf (probability 0), so they are never drawn
        logits_XxV = jnp.pad(
            logits_XxV, [(0, 0)] * (logits_XxV.ndim - 1) + [(0, pad)], constant_values=-jnp.inf
        )
    logits_XxNxb = logits_XxV.reshape(logits_XxV.shape[:-1] + (num_blocks, VOCAB_BLOCK))
    # exp fuses into the block sums: the [X, V] probabilities are never stored;
    # only the S drawn blocks are exponentiated again below.
    mass_XxN = jnp.exp(logits_XxNxb - lse_X[..., None, None]).sum(-1)
    cdf_XxN = jnp.cumsum(mass_XxN, axis=-1)
    total_X = cdf_XxN[..., -1]
    v_XxS = u_XxS * total_X[..., None]
    block_XxS = jnp.minimum(_first_above(cdf_XxN, v_XxS), _last_positive(mass_XxN)[..., None])
    before_XxS = jnp.where(
        block_XxS > 0, jnp.take_along_axis(cdf_XxN, jnp.maximum(block_XxS - 1, 0), -1), 0.0
    )
    in_block_XxSxb = jnp.exp(
        jnp.take_along_axis(logits_XxNxb, block_XxS[..., None], axis=-2) - lse_X[..., None, None]
    )
    # Per draw its own block: the first in-block index whose cumulated mass
    # exceeds the draw's residual.
    residual_XxS = v_XxS - before_XxS
    offset_XxS = jnp.sum(
        jnp.cumsum(in_block_XxSxb, -1) <= residual_XxS[..., None], axis=-1, dtype=jnp.int32
    )
    offset_XxS = jnp.minimum(offset_XxS, _last_positive(in_block_XxSxb))
    return block_XxS * VOCAB_BLOCK + offset_XxS


def distinct_counts(ids_XxS: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Distinct ids (ascending, empty slots last with id 0) and their counts.

    Args:
        ids_XxS: drawn ids, any order.

    Returns:
        (distinct_ids_XxS int32, counts_XxS uint8); counts sum to S per row.
    """
    s = ids_XxS.shape[-1]
    sorted_XxS = jnp.sort(ids_XxS, axis=-1)
    new_XxS = jnp.concatenate(
        [jnp.ones(sorted_XxS.shape[:-1] + (1,), bool), sorted_XxS[..., 1:] != sorted_XxS[..., :-1]],
        axis=-1,
    )
    slot_XxS = jnp.cumsum(new_XxS, axis=-1, dtype=jnp.int32) - 1
    flat_slot = slot_XxS.reshape(-1, s)
    flat_ids = sorted_XxS.reshape(-1, s)
    # Every write to a slot carries the same id, so the scatter is deterministic.
    distinct = jax.vmap(lambda i, d: jnp.zeros(s, jnp.int32).at[i].set(d))(flat_slot, flat_ids)
    counts = jax.vmap(lambda i: jnp.zeros(s, jnp.int32).at[i].add(1))(flat_slot)
    return (distinct.reshape(ids_XxS.shape), counts.astype(jnp.uint8).reshape(ids_XxS.shape))


def sample_logprobs(
    logits_XxV: jax.Array, lse_X: jax.Array, rows_X: jax.Array, positions_X: jax.Array, samples: int
) -> dict:
    """The sampled signal of a tile of positions.

    Args:
        logits_XxV: float32 logits.
        lse_X: their logsumexp (the one the top-k log-probs use).
        rows_X, positions_X: global store row and position of each token.
        samples: S ≥ 1.

    Returns:
        {"sampled_ids": int32[X,S], "sampled_counts": uint8[X,S],
         "sampled_logprobs": float32[X,S]} (-inf and id 0 in empty slots).
    """
    u_XxS = stratified_uniforms(rows_X, positions_X, samples)
    ids_XxS, counts_XxS = distinct_counts(inverse_cdf(logits_XxV, lse_X, u_XxS))
    logprobs_XxS = jnp.take_along_axis(logits_XxV, ids_XxS, -1) - lse_X[..., None]
    logprobs_XxS = jnp.where(counts_XxS > 0, logprobs_XxS, -jnp.inf)
    return {"sampled_ids": ids_XxS, "sampled_counts": counts_XxS, "sampled_logprobs": logprobs_XxS}
