"""nll, normalized_mse, top1_agreement, masked_mean against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model.errors import ConfigError
from trainer.training import losses, signals


def test_nll_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 40)).astype(np.float32) * 3
    targets = rng.integers(0, 40, size=(2, 5)).astype(np.int32)
    got = losses.nll(jnp.asarray(logits), jnp.asarray(targets))
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    want = lse - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    assert got.shape == (2, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_nll_bf16_logits_computed_in_fp32():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(1, 3, 1000)) * 20, jnp.bfloat16)
    targets = jnp.asarray([[1, 2, 3]])
    got = losses.nll(logits, targets)
    want = losses.nll(logits.astype(jnp.float32), targets)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _np_normalized_mse(p, t, eps=1e-6):
    p = p.astype(np.float64)
    t = t.astype(np.float64)
    pu = p / np.sqrt((p * p).sum(-1, keepdims=True) + eps)
    tu = t / np.sqrt((t * t).sum(-1, keepdims=True) + eps)
    return ((pu - tu) ** 2).mean(-1)


def test_normalized_mse_matches_numpy_including_zero_vectors():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(2, 4, 16)).astype(np.float32) * 50
    # Large teacher scale as in Gemma 3's median layer (mean square ~3e5).
    target = rng.normal(size=(2, 4, 16)).astype(np.float32) * 550
    pred[0, 0] = 0.0
    target[1, 3] = 0.0
    pred[1, 1] = target[1, 1] * 3.0  # same direction -> 0 loss
    got = losses.normalized_mse(jnp.asarray(pred), jnp.asarray(target))
    want = _np_normalized_mse(pred, target)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert float(got[1, 1]) < 1e-7
    # Zero pred vs unit target: ‖0 − u‖² / D = 1/D.
    np.testing.assert_allclose(float(got[0, 0]), 1.0 / 16, rtol=1e-5)
    assert np.all(np.asarray(got) <= 4.0 / 16 + 1e-6)


def test_normalized_mse_gradient_finite_at_zero_and_matches_fd():
    rng = np.random.default_rng(3)
    target = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
    g0 = jax.grad(lambda p: losses.normalized_mse(p, target))(jnp.zeros(8))
    assert np.all(np.isfinite(np.asarray(g0)))
    p = rng.normal(size=(8,))
    g = np.asarray(
        jax.grad(lambda x: losses.normalized_mse(x, target))(jnp.asarray(p, jnp.float32))
    )
    h = 1e-6
    num = np.array(
        [
            (
                _np_normalized_mse(p + h * e, np.asarray(target))
                - _np_normalized_mse(p - h * e, np.asarray(target))
            )
            / (2 * h)
            for e in np.eye(8)
        ]
    )
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-6)


def test_normalized_mse_shape_mismatch_raises():
    with pytest.raises(ConfigError, match="map the student hidden to d_T"):
        losses.normalized_mse(jnp.zeros((1, 2, 8)), jnp.zeros((1, 2, 16)))


def test_top1_agreement():
    logits = jnp.asarray([[[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]]])
    ids = jnp.asarray([[[1, 2], [2, 0]]], jnp.uint16)
    teacher = signals.TopkSignal(ids=ids, logprobs=jnp.zeros(ids.shape, jnp.float32))
    np.testing.assert_array_equal(losses.top1_agreement(logits, teacher), [[1.0, 0.0]])


def test_masked_mean_ignores_masked_nan_and_empty_mask():
    values = jnp.asarray([[1.0, 3.0, jnp.nan]])
    mask = jnp.asarray([[1, 1, 0]])
    assert float(losses.masked_mean(values, mask)) == 2.0
    assert float(losses.masked_mean(values, jnp.zeros_like(mask))) == 0.0
    assert float(losses.masked_mean(jnp.asarray([2.0, 4.0]))) == 3.0
