"""trainer.model.regressors: shapes, math vs numpy, counts from the init, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import regressors
from trainer.model.errors import ConfigError


@pytest.mark.parametrize("d_s,d_t", [(8, 12), (12, 8)])  # d_T < d_S must work too
def test_linear_matches_numpy(d_s, d_t):
    params = regressors.init_linear(jax.random.key(0), d_s, d_t)
    h = np.random.default_rng(0).normal(size=(2, 3, d_s)).astype(np.float32)
    out = regressors.apply_linear(params, jnp.asarray(h))
    assert out.shape == (2, 3, d_t)
    np.testing.assert_allclose(out, h @ np.asarray(params["w"]), rtol=1e-5, atol=1e-6)
    assert set(params) == {"w"}  # no bias in W_R


def test_mlp_matches_numpy():
    d_s, d_t = 6, 10
    params = regressors.init_mlp(jax.random.key(1), d_s, d_t)
    params = {k: v + 0.1 for k, v in params.items()}  # non-zero biases
    h = np.random.default_rng(1).normal(size=(2, 3, d_s))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = h @ p["w1"] + p["b1"]
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    want = gelu @ p["w2"] + p["b2"]
    got = regressors.apply_regressor("mlp", params, jnp.asarray(h, jnp.float32))
    assert p["w1"].shape == (d_s, 4 * d_s)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_param_count_from_init_and_axes():
    assert regressors.regressor_param_count("linear", 640, 2560) == 640 * 2560
    assert regressors.regressor_param_count(regressors.RegressorKind.MLP, 640, 2560) == (
        640 * 2560 + 2560 + 2560 * 2560 + 2560
    )
    params = regressors.init_regressor("mlp", jax.random.key(0), 4, 6)
    axes = regressors.logical_axes(params)
    for name, leaf in params.items():
        assert len(axes[name]) == leaf.ndim


def test_bf16_compute_dtype():
    params = regressors.init_linear(jax.random.key(0), 8, 4)
    out = regressors.apply_linear(params, jnp.ones((1, 2, 8), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and params["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: regressors.init_regressor("conv", jax.random.key(0), 4, 4),
            "unknown regressor kind",
        ),
        (
            lambda: regressors.regressor_param_count("linear", 0, 4),
            "d_student=0 must be a positive int",
        ),
        (lambda: regressors.init_mlp(jax.random.key(0), 4, 2.5), "d_teacher=2.5 must be"),
        (
            lambda: regressors.apply_linear(
                regressors.init_linear(jax.random.key(0), 4, 8), jnp.ones((1, 8))
            ),
            "capture the student layer",
        ),
        (lambda: regressors.logical_axes({"kernel": jnp.ones(2)}), "unknown regressor param names"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
    assert issubclass(ConfigError, ValueError)
