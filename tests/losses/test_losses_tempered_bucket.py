"""tail="bucket" at τ ≠ 1: the tempered-tail estimate against full-vocabulary KL.

References are float64 numpy written from the formula in trainer.training.losses'
module docstring, never the function under test.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from trainer.training import losses, signals


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _full_kl(teacher_lp, student_logits, tau):
    """KL(softmax(log p/τ) ‖ softmax(z/τ)) over the whole vocabulary, fp64."""
    p = np.exp(_log_softmax(teacher_lp / tau))
    return np.sum(p * (np.log(p) - _log_softmax(student_logits / tau)), axis=-1)


def _topk(teacher_lp, k):
    order = np.argsort(-teacher_lp, axis=-1)[..., :k]
    return order.astype(np.int32), np.take_along_axis(teacher_lp, order, axis=-1)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_k_equal_v_bucket_is_the_full_vocabulary_kl(tau):
    rng = np.random.default_rng(0)
    v = 40
    teacher_lp = _log_softmax(rng.normal(size=(3, v)) * 2.0)
    student = rng.normal(size=(3, v)) * 2.0
    ids, lps = _topk(teacher_lp, v)
    got = losses.kd_topk(
        jnp.asarray(student, jnp.float32),
        signals.TopkSignal(ids=jnp.asarray(ids), logprobs=jnp.asarray(lps, jnp.float32)),
        tau,
        tail="bucket",
    )
    np.testing.assert_allclose(
        np.asarray(got), _full_kl(teacher_lp, student, tau), rtol=1e-4, atol=1e-5
    )


def _zipf_teacher(v, rows, rng):
    ranks = np.arange(1, v + 1, dtype=np.float64)
    lp = np.log(1.0 / ranks) - np.log(np.sum(1.0 / ranks))
    return np.stack([lp[rng.permutation(v)] for _ in range(rows)])


def test_zipf_tail_estimate_is_close_where_the_bounds_are_not():
    """Zipf(1), V=2048, k=32, τ=0.5: S within 10%, either bound off by > 3x."""
    v, k, tau = 2048, 32, 0.5
    lp = _zipf_teacher(v, 1, np.random.default_rng(1))[0]
    p = np.sort(np.exp(lp))[::-1]
    m, n, t = p[k:].sum(), v - k, 1.0 / tau
    true_s = np.sum(p[k:] ** t)
    even, packed = n * (m / n) ** t, m * min(p[k - 1], m) ** (t - 1)
    est = np.exp(
        float(losses.tempered_tail_logmass(jnp.log(m), jnp.log(p[k - 1]), jnp.asarray(n), tau))
    )
    assert even < true_s < packed and packed / true_s > 3 and true_s / even > 3
    assert abs(est / true_s - 1) < 0.10


def test_zipf_bucket_kl_tracks_the_full_vocabulary_kl():
    """With a student near the teacher, bucket-at-τ KL ≈ exact bucketed KL ≤ full KL."""
    v, k, tau = 2048, 32, 0.5
    rng = np.random.default_rng(2)
    teacher_lp = _zipf_teacher(v, 4, rng)
    student = teacher_lp + 0.3 * rng.normal(size=teacher_lp.shape)
    ids, lps = _topk(teacher_lp, k)
    got = np.asarray(
        losses.kd_topk(
            jnp.asarray(student, jnp.float32),
            signals.TopkSignal(ids=jnp.asarray(ids), logprobs=jnp.asarray(lps, jnp.float32)),
            tau,
            tail="bucket",
        )
    )
    # Exact bucketed KL: the true tempered tail of the teacher as the extra class.
    pt = np.exp(_log_softmax(teacher_lp / tau))
    qs = np.exp(_log_softmax(student / tau))
    off = np.ones_like(pt, bool)
    np.put_along_axis(off, ids, False, axis=-1)
    p_c = np.concatenate([np.take_along_axis(pt, ids, -1), (pt * off).sum(-1, keepdims=True)], -1)
    q_c = np.concatenate([np.take_along_axis(qs, ids, -1), (qs * off).sum(-1, keepdims=True)], -1)
    exact = np.sum(p_c * np.log(p_c / q_c), -1)
    full = _full_kl(teacher_lp, student, tau)
    assert np.all(exact <= full + 1e-9)  # Merging classes never raises a KL.
    np.testing.assert_allclose(got, exact, rtol=0.1, atol=2e-3)


def test_loss_and_store_penalty_use_the_same_tail_estimate():
    from store import objective_penalty

    for tau in (0.5, 1.0, 2.0):
        args = (np.log(0.3), np.log(0.01), 100)
        jax_value = float(
            losses.tempered_tail_logmass(
                jnp.asarray(args[0]), jnp.asarray(args[1]), jnp.asarray(args[2]), tau
            )
        )
        assert jax_value == pytest.approx(
            float(objective_penalty.tempered_tail_logmass(*args, tau)), rel=1e-5
        )
