"""trainer.model.tiling: tiles cut T only, run in order, and reassemble exactly."""

import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import tiling


@pytest.mark.parametrize("token_tile", [1, 6, 7, 20, 10**6])
def test_map_token_tiles_reassembles_in_order(token_tile):
    x = jnp.arange(3 * 7 * 2, dtype=jnp.float32).reshape(3, 7, 2)
    out = tiling.map_token_tiles(lambda h: {"sum": h.sum(-1), "same": h}, x, token_tile)
    np.testing.assert_array_equal(np.asarray(out["same"]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(out["sum"]), np.asarray(x.sum(-1)))


def test_tile_shape_by_hand():
    # B=4 rows, T=10: 8 tokens per tile -> 2 positions per tile, 5 tiles.
    assert tiling.tile_shape(4, 10, 8) == (2, 5)
    # Fewer tokens than rows still takes one position; a huge tile is all of T.
    assert tiling.tile_shape(4, 10, 1) == (1, 10)
    assert tiling.tile_shape(4, 10, 10**6) == (10, 1)
    # 3 positions per tile over T=10: 4 tiles, the last padded by 2.
    assert tiling.tile_shape(2, 10, 6) == (3, 4)


def test_pytree_inputs_are_tiled_alongside():
    # The tile function sees matching slices of every input leaf.
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    ids = jnp.arange(2 * 5, dtype=jnp.int32).reshape(2, 5)
    seen = []

    def fn(tiles):
        h, inputs = tiles
        seen.append(h.shape)
        return {"picked": h[..., 0] + inputs["ids"]}

    out = tiling.map_token_tiles(fn, (x, {"ids": ids}), token_tile=4)
    assert seen == [(2, 2, 3)]  # traced once: one tile of B=2 x 2 positions
    np.testing.assert_array_equal(np.asarray(out["picked"]), np.asarray(x[..., 0] + ids))
