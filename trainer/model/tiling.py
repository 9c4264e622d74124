"""Token tiling: run a function over sequence tiles of [B, T, ...] arrays, one at a time.

The one mechanism behind every "never materialise [B, T, V]" path: the
trainer's tiled logit losses (`trainer.training.tiled_loss`), the teacher's
tiled top-k (`teacher_dump.extract`) and evaluation scoring. Tiles cut the
sequence axis only and keep the whole (possibly device-sharded) batch axis:
each device computes its own rows of each tile and nothing is gathered
(cutting the flattened B·T axis instead would make XLA all-gather the inputs
and compute every tile everywhere). Tiles run one after another
(`lax.map`), so what the function materialises per tile is live for one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def tile_shape(batch: int, seq: int, token_tile: int) -> tuple[int, int]:
    """(positions per tile, number of tiles) for about `token_tile` tokens per tile.

    Each tile covers all `batch` rows and `max(1, token_tile // batch)`
    positions, at most `seq`; the last tile is padded.
    """
    chunk = min(seq, max(1, token_tile // batch))
    return chunk, -(-seq // chunk)


def to_tiles(x_BxTx_: jax.Array, num_tiles: int, chunk: int) -> jax.Array:
    """[B, T, ...] -> [num_tiles, B, chunk, ...]: T cut into chunks, zero-padded."""
    pad = num_tiles * chunk - x_BxTx_.shape[1]
    if pad:
        x_BxTx_ = jnp.pad(x_BxTx_, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxTx_.ndim - 2))
    x_BxCxtx_ = x_BxTx_.reshape((x_BxTx_.shape[0], num_tiles, chunk) + x_BxTx_.shape[2:])
    return jnp.moveaxis(x_BxCxtx_, 1, 0)


def from_tiles(y_CxBxtx_: jax.Array, seq: int) -> jax.Array:
    """[num_tiles, B, chunk, ...] -> [B, seq, ...] (padding positions dropped)."""
    y_BxCxtx_ = jnp.moveaxis(y_CxBxtx_, 0, 1)
    b, c, t = y_BxCxtx_.shape[:3]
    return y_BxCxtx_.reshape((b, c * t) + y_BxCxtx_.shape[3:])[:, :seq]


def map_token_tiles(fn: Callable, xs, token_tile: int):
    """Applies `fn` to consecutive position tiles of `xs`, sequentially.

    Args:
        fn: maps a pytree of [B, t, ...] tiles (shaped like `xs`) to a pytree
            of [B, t, ...] arrays.
        xs: a pytree of [B, T, ...] arrays (one array is a pytree too); every
            leaf shares B and T.
        token_tile: tokens per tile; t = max(1, token_tile // B), clipped to T.

    Returns:
        fn's pytree with the tiles put back together to [B, T, ...].
    """
    b, t = jax.tree_util.tree_leaves(xs)[0].shape[:2]
    chunk, num_tiles = tile_shape(b, t, token_tile)
    tiles = jax.tree_util.tree_map(lambda x: to_tiles(x, num_tiles, chunk), xs)
    out = jax.lax.map(fn, tiles)
    return jax.tree_util.tree_map(lambda y: from_tiles(y, t), out)
