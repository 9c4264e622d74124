"""normalized_mse's reduction (what γ weighs) against float64 numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from trainer.training import loss_options, losses


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("d", [8, 128])
def test_sum_is_the_squared_distance_and_mean_is_it_over_d(d):
    rng = np.random.default_rng(d)
    pred, target = rng.normal(size=(2, 3, d)) * 50.0, rng.normal(size=(2, 3, d)) * 3e2
    u, v = _unit(pred), _unit(target)
    distance2 = ((u - v) ** 2).sum(-1)  # ‖u - v‖², float64
    cos = (u * v).sum(-1)
    np.testing.assert_allclose(distance2, 2 - 2 * cos, rtol=1e-12)  # the reference itself
    got_sum = losses.normalized_mse(
        jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), reduction="sum"
    )
    got_mean = losses.normalized_mse(
        jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(got_sum), distance2, rtol=1e-5, atol=1e-6)
    # The default is the paper's mean over D: the same number divided by the width.
    np.testing.assert_allclose(np.asarray(got_mean), distance2 / d, rtol=1e-5, atol=1e-7)
    got_enum = losses.normalized_mse(
        jnp.asarray(pred, jnp.float32),
        jnp.asarray(target, jnp.float32),
        reduction=loss_options.HiddenReduction.SUM,
    )
    np.testing.assert_array_equal(np.asarray(got_enum), np.asarray(got_sum))


def test_sum_reaches_four_for_opposite_vectors_at_any_width():
    for d in (4, 2560):
        x = jnp.ones((1, d))
        assert float(losses.normalized_mse(x, -x, reduction="sum")[0]) == pytest.approx(
            4.0, rel=1e-5
        )
        assert float(losses.normalized_mse(x, -x)[0]) == pytest.approx(4.0 / d, rel=1e-5)


def test_unknown_reduction_is_refused_with_the_choices():
    with pytest.raises(losses.ConfigError, match="max.*mean.*sum|mean.*sum.*max"):
        losses.normalized_mse(jnp.ones((1, 4)), jnp.ones((1, 4)), reduction="max")
