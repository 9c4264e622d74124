"""trainer.training.schedules: values at the key steps, jit/optax use, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.model.errors import ConfigError
from trainer.training import schedules


def _at(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_wsd_key_steps():
    # 1000 steps, 100 warm-up, last 10% (100 steps) linear decay to η/100.
    lr = schedules.wsd(4e-4, 1000, 100, 0.1, 0.01)
    got = _at(lr, [0, 50, 100, 500, 900, 950, 1000, 5000])
    want = [0.0, 2e-4, 4e-4, 4e-4, 4e-4, 4e-4 * (1 - 0.99 * 0.5), 4e-6, 4e-6]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_wsd_jit_and_optax_accept_it():
    lr = schedules.wsd(1e-3, 100, 10)
    np.testing.assert_allclose(jax.jit(lr)(jnp.int32(5)), 5e-4, rtol=1e-6)
    opt = optax.adamw(learning_rate=lr, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.1)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    updates, _ = opt.update({"w": jnp.ones(3)}, state, params)
    # Step 0 of a warm-up from 0: no update at all.
    np.testing.assert_array_equal(updates["w"], 0.0)


def test_wsd_no_warmup_no_decay_is_constant():
    np.testing.assert_allclose(_at(schedules.wsd(1.0, 10, 0, 0.0), [0, 5, 10, 20]), 1.0)


def test_constant_after_warmup():
    lr = schedules.constant_after_warmup(1e-3, 1000)
    np.testing.assert_allclose(_at(lr, [0, 500, 1000, 10**6]), [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    assert float(schedules.constant_after_warmup(2.0, 0)(3)) == 2.0


@pytest.mark.parametrize(
    "name,kwargs,steps,want",
    [
        ("constant", {}, [0, 50, 100], [0.9, 0.9, 0.9]),
        ("linear", {}, [0, 25, 100, 200], [0.0, 0.225, 0.9, 0.9]),
        ("linear", dict(alpha_start=0.5), [0, 50, 100], [0.5, 0.7, 0.9]),
        (
            "wsd",
            dict(warmup_steps=10, decay_fraction=0.2),
            [0, 5, 10, 80, 90, 100],
            [0.0, 0.45, 0.9, 0.9, 0.45, 0.0],
        ),
        (
            "wsd",
            dict(warmup_steps=0, decay_fraction=0.5, alpha_final=0.1),
            [0, 50, 75, 100],
            [0.9, 0.9, 0.5, 0.1],
        ),
    ],
)
def test_alpha_schedules(name, kwargs, steps, want):
    sched = schedules.alpha_schedule(name, 0.9, 100, **kwargs)
    np.testing.assert_allclose(_at(sched, steps), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: schedules.wsd(1e-3, 100, 95, 0.1), "exceed total_steps=100; lower warmup_steps"),
        (lambda: schedules.wsd(1e-3, 100, 10, 1.5), r"decay_fraction=1.5 must be in \[0, 1\]"),
        (lambda: schedules.wsd(1e-3, 100, 10, 0.1, 0.0), r"final_fraction=0.0 must be in \(0, 1\]"),
        (lambda: schedules.wsd(-1.0, 100, 10), "peak learning rate=-1.0 must be"),
        (lambda: schedules.wsd(1e-3, 0, 0), "total_steps=0 must be >= 1"),
        (lambda: schedules.wsd(1e-3, 10.5, 0), "total_steps must be an integer"),
        (lambda: schedules.constant_after_warmup(1e-3, -1), "warmup_steps=-1 must be >= 0"),
        (
            lambda: schedules.constant_after_warmup(1e-3, 11, 10),
            "warmup_steps=11 exceeds total_steps=10",
        ),
        (lambda: schedules.alpha_schedule("step", 0.5, 10), "unknown alpha schedule 'step'"),
        (lambda: schedules.alpha_schedule("constant", 1.2, 10), r"alpha=1.2 must be in \[0, 1\]"),
        (lambda: schedules.alpha_schedule("wsd", 0.5, 10, warmup_steps=10), "exceed total_steps"),
    ],
)
def test_bad_values_raise_clear_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
    assert issubclass(ConfigError, ValueError)
