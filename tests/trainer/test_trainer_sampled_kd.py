"""trainer.training.sampled_kd: the sampled-logit KD estimator is unbiased, tiled, refused where it must be.

References are float64 numpy (the full-vocabulary KL and its gradient q − p,
hand-derived), never the function under test. Monte-Carlo tolerances are 5
standard errors of the mean, computed from the exact per-draw variance, so a
correct estimator fails with probability < 1e-6 per check (the seed is fixed
anyway); a bias of that size or larger fails.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_testlib import draw_sampled

from trainer.model.errors import ConfigError, ModelInputError
from trainer.training import losses, sampled_kd, signals, tiled_loss

V, S, DRAWS = 16, 4, 20000


def draw(logp_V, num_draws, num_samples, seed):
    """`num_draws` independent store positions of one teacher distribution."""
    return draw_sampled(np.broadcast_to(logp_V, (num_draws, logp_V.size)), num_samples, seed)


def sampled(ids, counts, lps):
    """The teacher's SampledSignal, built by hand from its three arrays."""
    return signals.SampledSignal(ids=ids, counts=counts, logprobs=lps)


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def _teacher_student(seed=0):
    rng = np.random.default_rng(seed)
    logp_V = _log_softmax64(rng.normal(size=V) * 2.0)
    z_V = rng.normal(size=V) * 1.5
    return logp_V, z_V


def test_estimator_mean_equals_full_vocabulary_kl():
    logp_V, z_V = _teacher_student()
    ids, counts, lps = draw(logp_V, DRAWS, S, seed=1)
    logits_NxV = jnp.broadcast_to(jnp.asarray(z_V, jnp.float32), (DRAWS, V))
    got = np.asarray(
        jax.jit(sampled_kd.kd_sampled)(logits_NxV, sampled(ids, counts, lps)), np.float64
    )

    p_V, logq_V = np.exp(logp_V), _log_softmax64(z_V)
    f_V = logp_V - logq_V
    kl = float(np.sum(p_V * f_V))
    var_per_position = float(np.sum(p_V * (f_V - kl) ** 2)) / S
    tol = 5.0 * np.sqrt(var_per_position / DRAWS) + 1e-5
    assert abs(got.mean() - kl) < tol, (got.mean(), kl, tol)
    assert tol < 0.05 * kl  # the check has teeth: far tighter than the KL itself
    # The top-k KD on the same budget of ids is biased (k = S ids, tail dropped).
    order = np.argsort(-logp_V)[:S]
    topk = losses.kd_topk(
        jnp.asarray(z_V[None], jnp.float32),
        signals.TopkSignal(
            ids=jnp.asarray(order[None]), logprobs=jnp.asarray(logp_V[order][None], jnp.float32)
        ),
        1.0,
        tail="zero",
    )
    assert abs(float(topk[0]) - kl) > 10 * tol


def test_gradient_mean_equals_full_vocabulary_gradient():
    logp_V, z_V = _teacher_student(seed=2)
    ids, counts, lps = draw(logp_V, DRAWS, S, seed=3)

    def mean_kd(z):
        logits = jnp.broadcast_to(z, (DRAWS, V))
        return jnp.mean(sampled_kd.kd_sampled(logits, sampled(ids, counts, lps)))

    got = np.asarray(jax.jit(jax.grad(mean_kd))(jnp.asarray(z_V, jnp.float32)), np.float64)
    p_V = np.exp(logp_V)
    want = np.exp(_log_softmax64(z_V)) - p_V  # d KL(p‖softmax z) / dz, by hand
    tol_V = 5.0 * np.sqrt(p_V * (1 - p_V) / (S * DRAWS)) + 1e-6
    assert np.all(np.abs(got - want) < tol_V), np.abs(got - want) / tol_V


def test_counts_weigh_repeated_ids_and_empty_slots_are_inert():
    # One position, S=5: id 3 drawn twice, id 7 three times; slots 2-4 empty with garbage.
    lp3, lp7 = np.log(0.4), np.log(0.5)
    ids = np.array([[3, 7, 0, 0, 9]], np.int32)
    counts = np.array([[2, 3, 0, 0, 0]], np.uint8)
    lps = np.array([[lp3, lp7, -np.inf, -np.inf, -np.inf]], np.float32)
    z = np.random.default_rng(4).normal(size=(1, V))
    logq = _log_softmax64(z[0])
    want = 0.4 * (lp3 - logq[3]) + 0.6 * (lp7 - logq[7])
    value, grad = jax.value_and_grad(
        lambda x: sampled_kd.kd_sampled(x, sampled(ids, counts, lps))[0]
    )(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    want_grad = np.exp(logq)
    want_grad[3] -= 0.4
    want_grad[7] -= 0.6
    np.testing.assert_allclose(np.asarray(grad)[0], want_grad, atol=1e-6)

    # A position with no draw at all: value 0, gradient 0, nothing NaN.
    empty = np.zeros((1, 5), np.uint8)
    v0, g0 = jax.value_and_grad(
        lambda x: sampled_kd.kd_sampled(
            x, sampled(ids, empty, np.full((1, 5), -np.inf, np.float32))
        )[0]
    )(jnp.asarray(z, jnp.float32))
    assert float(v0) == 0.0 and np.all(np.asarray(g0) == 0.0)


def test_top1_agreement_uses_the_most_probable_drawn_id():
    ids = np.array([[2, 5, 0], [1, 4, 0], [0, 0, 0]], np.int32)
    counts = np.array([[1, 3, 0], [2, 2, 0], [0, 0, 0]], np.uint8)
    lps = np.array([[-0.5, -1.0, -np.inf], [-2.0, -0.3, -np.inf], [-np.inf] * 3], np.float32)
    logits = np.full((3, 8), -5.0, np.float32)
    logits[0, 2] = logits[1, 1] = logits[2, 0] = 5.0
    got = sampled_kd.top1_agreement_sampled(jnp.asarray(logits), sampled(ids, counts, lps))
    # Row 0: best drawn id 2 (not the most counted 5) = student's argmax; row 1: 4 != 1;
    # row 2: no draw -> 0 although the student's argmax is the placeholder id 0.
    np.testing.assert_array_equal(np.asarray(got), [1.0, 0.0, 0.0])


B, T, D, TILE = 2, 12, 4, 10


def _tiled_inputs(seed=5):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    emb = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
    logp_NxV = np.stack([_log_softmax64(rng.normal(size=V) * 2) for _ in range(B * T)])
    arrays = draw_sampled(logp_NxV, S, seed=100)
    ids, counts, lps = (jnp.asarray(flat.reshape(B, T, S)) for flat in arrays)
    teacher = signals.SampledSignal(ids=ids, counts=counts, logprobs=lps.astype(jnp.float16))
    inputs = {
        "targets": jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
        tiled_loss.TEACHER: teacher,
    }
    return hidden, emb, inputs


def test_tiled_equals_untiled_and_is_deterministic():
    hidden, emb, inputs = _tiled_inputs()
    fn = tiled_loss.logit_terms_fn(nll=True, kd=True, top1=True, signal="sampled", tail="bucket")
    teacher = inputs[tiled_loss.TEACHER]

    def tiled(h, e):
        out = tiled_loss.tiled_logit_losses(h, e, fn, inputs, tile_tokens=TILE)
        return out["kd"].mean() + 0.3 * out["nll"].mean(), out

    def untiled(h, e):
        logits = tiled_loss.tile_logits(h.reshape(-1, D), e).reshape(B, T, V)
        return (
            sampled_kd.kd_sampled(logits, teacher).mean()
            + 0.3 * losses.nll(logits, inputs["targets"]).mean()
        )

    (val, out), grads = jax.jit(jax.value_and_grad(tiled, argnums=(0, 1), has_aux=True))(
        hidden, emb
    )
    want_val, want_grads = jax.jit(jax.value_and_grad(untiled, argnums=(0, 1)))(hidden, emb)
    assert set(out) == {"nll", "kd", "top1"}
    logits = tiled_loss.tile_logits(hidden.reshape(-1, D), emb).reshape(B, T, V)
    np.testing.assert_array_equal(
        np.asarray(out["top1"]), np.asarray(sampled_kd.top1_agreement_sampled(logits, teacher))
    )
    np.testing.assert_allclose(float(val), float(want_val), rtol=1e-6)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)
    # Determinism: the estimator is a fixed function of the stored draws.
    (val2, _), grads2 = jax.jit(jax.value_and_grad(tiled, argnums=(0, 1), has_aux=True))(
        hidden, emb
    )
    assert float(val2) == float(val)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(g2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=2.0), "loss.tau=2 with loss.signal=sampled"),
        (dict(divergence="reverse_kl"), "loss.divergence=reverse_kl with loss.signal=sampled"),
        (dict(divergence="jsd"), "--set loss.divergence=forward_kl or --set loss.signal=topk"),
        (dict(signal="sampledd"), "unknown KD signal 'sampledd'"),
    ],
)
def test_settings_the_estimator_cannot_honour_are_refused(kwargs, match):
    kwargs = {"signal": "sampled", **kwargs}
    with pytest.raises(ConfigError, match=match):
        tiled_loss.logit_terms_fn(kd=True, **kwargs)


def test_sampled_inputs_are_required():
    hidden, emb, inputs = _tiled_inputs(seed=7)
    fn = tiled_loss.logit_terms_fn(kd=True, signal="sampled")
    assert fn.required_inputs == ("targets", tiled_loss.TEACHER)
    with pytest.raises(ModelInputError, match=r"lacks \['teacher'\]"):
        tiled_loss.tiled_logit_losses(
            hidden, emb, fn, {k: v for k, v in inputs.items() if k != tiled_loss.TEACHER}
        )
