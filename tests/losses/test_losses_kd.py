"""trainer.training.losses against independent float64 numpy references.

Tolerances: the JAX side computes in fp32, the references in fp64, so values
are compared at rtol/atol ~1e-5 (a few fp32 ulps of log-softmax over V ≤ 64).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model.errors import ConfigError
from trainer.training import loss_options, losses, signals


def kd_topk(student, ids, lps, *args, **kwargs):
    """losses.kd_topk on the teacher's TopkSignal built by hand from its two arrays.

    Eager on purpose: op-level compile caches are shared across the many small
    parametrized cases, which is cheaper here than one jit compile per case.
    """
    return losses.kd_topk(student, signals.TopkSignal(ids=ids, logprobs=lps), *args, **kwargs)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_div(p, q, divergence):
    """Divergence between two (not necessarily normalised) vectors, fp64."""
    if divergence == "forward_kl":
        m = p > 0
        return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))
    if divergence == "reverse_kl":
        # Generalised KL for unnormalised q (see kd_topk's docstring).
        m = q > 0
        return float(np.sum(q[m] * (np.log(q[m]) - np.log(p[m]))) - q.sum() + p.sum())
    if divergence == "jsd":
        mid = 0.5 * (p + q)
        return 0.5 * _np_div(p, mid, "forward_kl") + 0.5 * _np_div(q, mid, "forward_kl")
    raise AssertionError(divergence)


def _np_kd_topk(logits, ids, lps, tau, tail, divergence):
    """Loop-per-token fp64 reference of kd_topk, written from the docstring."""
    logits = np.asarray(logits, np.float64)
    lps = np.asarray(lps, np.float64)
    out = np.zeros(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        valid = np.isfinite(lps[idx])
        if not valid.any():
            continue
        sel_ids = ids[idx][valid]
        s = _np_log_softmax(logits[idx] / tau)
        q = np.exp(s[sel_ids])
        if tail == "bucket":
            p = np.exp(lps[idx][valid])
            off = np.ones(logits.shape[-1], bool)
            off[sel_ids] = False
            m = max(1.0 - p.sum(), 1e-30)
            # Tempered tail: geometric mean of the even and the packed tail
            # (the estimate documented in trainer.training.losses), exact at τ = 1.
            n_tail, c, t = off.sum(), min(p.min(), m), 1.0 / tau
            s_tail = np.sqrt(n_tail * (m / n_tail) ** t * m * c ** (t - 1.0))
            p = np.append(p**t, s_tail)
            p = p / p.sum()
            q = np.append(q, np.exp(s[off]).sum())
        else:
            t = lps[idx][valid] / tau
            p = np.exp(t - t.max())
            p = p / p.sum()
            if tail == "renormalize":
                q = q / q.sum()
        out[idx] = _np_div(p, q, divergence)
    return out


def _make_batch(seed, b=2, t=3, v=48, k=8, n_dropped=3):
    """Student logits, teacher top-k (sorted desc) with some top-p-dropped slots."""
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(b, t, v)).astype(np.float32) * 2.0
    teacher = rng.normal(size=(b, t, v)) * 2.5
    teacher_lp = _np_log_softmax(teacher)
    order = np.argsort(-teacher_lp, axis=-1)[..., :k]
    lps = np.take_along_axis(teacher_lp, order, axis=-1).astype(np.float32)
    ids = order.astype(np.int32)
    # Token (0, 1): the last n_dropped slots were dropped by top-p.
    lps[0, 1, k - n_dropped :] = -np.inf
    ids[0, 1, k - n_dropped :] = 0
    # Token (1, 2): everything dropped (e.g. padding) -> KD value 0.
    lps[1, 2, :] = -np.inf
    ids[1, 2, :] = 0
    return student, ids, lps


CASES = [
    (tail, tau, div)
    for tail, tau, div in itertools.product(
        ["zero", "renormalize", "bucket"], [0.5, 1.0, 2.0], ["forward_kl", "reverse_kl", "jsd"]
    )
]


@pytest.mark.parametrize("tail,tau,divergence", CASES)
def test_kd_topk_matches_numpy_reference(tail, tau, divergence):
    student, ids, lps = _make_batch(seed=CASES.index((tail, tau, divergence)))
    got = kd_topk(
        jnp.asarray(student),
        jnp.asarray(ids),
        jnp.asarray(lps),
        tau,
        tail=tail,
        divergence=divergence,
    )
    want = _np_kd_topk(student, ids, lps, tau, tail, divergence)
    assert got.shape == (2, 3) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
    assert float(got[1, 2]) == 0.0
    assert np.all(np.asarray(got) >= -1e-6)


@pytest.mark.parametrize(
    "tail,tau,divergence",
    [
        ("zero", 0.5, "forward_kl"),
        ("zero", 2.0, "forward_kl"),
        ("zero", 1.0, "reverse_kl"),
        ("zero", 0.5, "jsd"),
        ("renormalize", 2.0, "reverse_kl"),
        ("bucket", 1.0, "forward_kl"),
        ("bucket", 1.0, "reverse_kl"),
        ("bucket", 1.0, "jsd"),
    ],
)
def test_kd_topk_with_full_support_equals_full_softmax_divergence(tail, tau, divergence):
    rng = np.random.default_rng(7)
    v = 32
    student = rng.normal(size=(2, 4, v)).astype(np.float32)
    teacher = rng.normal(size=(2, 4, v)) * 2.0
    lp = _np_log_softmax(teacher)
    order = np.argsort(-lp, axis=-1)
    got = kd_topk(
        jnp.asarray(student),
        jnp.asarray(order.astype(np.int32)),
        jnp.asarray(np.take_along_axis(lp, order, -1).astype(np.float32)),
        tau,
        tail=tail,
        divergence=divergence,
    )
    p = np.exp(_np_log_softmax(teacher / tau))
    q = np.exp(_np_log_softmax(student.astype(np.float64) / tau))
    want = np.array([[_np_div(p[i, j], q[i, j], divergence) for j in range(4)] for i in range(2)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "tail,tau,divergence",
    [("zero", 0.5, "forward_kl"), ("renormalize", 2.0, "reverse_kl"), ("bucket", 1.0, "jsd")],
)
def test_dropped_slots_equal_absent_slots_in_value_and_gradient(tail, tau, divergence):
    """-inf slots behave exactly as if they were not stored; no NaN anywhere."""
    student, ids, lps = _make_batch(seed=3, k=8, n_dropped=3)
    tok_logits = jnp.asarray(student[0, 1])
    full = lambda x: kd_topk(
        x, jnp.asarray(ids[0, 1]), jnp.asarray(lps[0, 1]), tau, tail=tail, divergence=divergence
    )
    short = lambda x: kd_topk(
        x,
        jnp.asarray(ids[0, 1, :5]),
        jnp.asarray(lps[0, 1, :5]),
        tau,
        tail=tail,
        divergence=divergence,
    )
    np.testing.assert_allclose(full(tok_logits), short(tok_logits), rtol=1e-6, atol=1e-7)
    g_full = jax.grad(full)(tok_logits)
    g_short = jax.grad(short)(tok_logits)
    assert np.all(np.isfinite(np.asarray(g_full)))
    np.testing.assert_allclose(g_full, g_short, rtol=1e-5, atol=1e-7)

    # A fully dropped token: value 0 and gradient exactly 0, not NaN.
    all_dropped = lambda x: kd_topk(
        x, jnp.zeros(8, jnp.int32), jnp.full(8, -jnp.inf), tau, tail=tail, divergence=divergence
    )
    assert float(all_dropped(tok_logits)) == 0.0
    np.testing.assert_array_equal(jax.grad(all_dropped)(tok_logits), 0.0)


def test_kd_topk_gradient_matches_finite_differences():
    student, ids, lps = _make_batch(seed=11)
    x = jnp.asarray(student[1, 0], jnp.float32)
    f = lambda x: kd_topk(x, jnp.asarray(ids[1, 0]), jnp.asarray(lps[1, 0]), 0.5)
    g = np.asarray(jax.grad(f)(x))
    f64 = lambda x: _np_kd_topk(
        x[None], ids[1, 0][None], lps[1, 0][None], 0.5, "zero", "forward_kl"
    )[0]
    h = 1e-5
    base = np.asarray(x, np.float64)
    num = np.array([(f64(base + h * e) - f64(base - h * e)) / (2 * h) for e in np.eye(base.size)])
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-5)


def test_kd_topk_accepts_bf16_and_uint16_ids():
    student, ids, lps = _make_batch(seed=5)
    got = kd_topk(
        jnp.asarray(student, jnp.bfloat16),
        jnp.asarray(ids.astype(np.uint16)),
        jnp.asarray(lps, jnp.float16),
        1.0,
    )
    assert got.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(got)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tail="zeros"), "unknown KD tail mode 'zeros'"),
        (dict(divergence="kl"), "unknown KD divergence 'kl'"),
        (dict(temperature=0.0), "must be finite and > 0"),
        (dict(temperature=float("nan")), "must be finite and > 0"),
        (dict(temperature="hot"), "must be a number"),
    ],
)
def test_kd_topk_bad_config_raises_clear_error(kwargs, match):
    student, ids, lps = _make_batch(seed=1)
    call = dict(temperature=1.0)
    call.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        kd_topk(jnp.asarray(student), jnp.asarray(ids), jnp.asarray(lps), **call)
    assert issubclass(ConfigError, ValueError)


def test_enums_accept_members_and_names():
    assert loss_options.parse_tail_mode("bucket") is loss_options.TailMode.BUCKET
    assert loss_options.parse_tail_mode(loss_options.TailMode.ZERO) is loss_options.TailMode.ZERO
    assert loss_options.parse_divergence("jsd") is loss_options.Divergence.JSD
