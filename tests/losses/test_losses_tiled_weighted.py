"""tiled_loss.tiled_weighted_loss: the weighted sum of the tiled terms with its gradient taken
in the forward pass equals the untiled autograd reference, and computes fewer unembeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model.errors import ModelInputError
from trainer.training import live_kd, losses, tiled_loss
from trainer.training.signals import TopkSignal

B, T, D, DT, V, K = 2, 12, 4, 6, 64, 6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    emb = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
    teacher_hidden = jnp.asarray(rng.normal(size=(B, T, DT)), jnp.float32)
    teacher_emb = jnp.asarray(rng.normal(size=(V, DT)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
    mask = jnp.asarray(rng.integers(0, 2, size=(B, T)), jnp.float32)
    lp = rng.normal(size=(B, T, V)) * 2
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    order = np.argsort(-lp, -1)[..., :K]
    topk = TopkSignal(
        ids=jnp.asarray(order, jnp.int32),
        logprobs=jnp.asarray(np.take_along_axis(lp, order, -1), jnp.float32),
    )
    return hidden, emb, teacher_hidden, teacher_emb, targets, mask, topk


def _weights(mask):
    # Distinct coefficients per term, one masked: a mix-up between terms would show.
    ones = jnp.ones((B, T), jnp.float32)
    return {"nll": 0.3 * ones / (B * T), "kd": 0.7 * mask / jnp.maximum(mask.sum(), 1.0)}


def _reference_live(hidden, emb, teacher_hidden, teacher_emb, targets, weights, tau):
    """Untiled autograd: full [B, T, V] logits of both sides, the divergence written out."""
    s = jnp.einsum("btd,vd->btv", hidden, emb)
    t = jnp.einsum("btd,vd->btv", teacher_hidden, teacher_emb)
    logq = jax.nn.log_softmax(s / tau, axis=-1)
    logp = jax.nn.log_softmax(t / tau, axis=-1)
    kd = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(s, -1), targets[..., None], -1)[..., 0]
    return jnp.sum(weights["nll"] * nll) + jnp.sum(weights["kd"] * kd)


@pytest.mark.parametrize("tile_tokens,tau", [(10, 1.0), (8, 2.0), (1000, 0.5)])
def test_live_kd_value_and_grads_equal_untiled_reference(tile_tokens, tau):
    hidden, emb, t_hidden, t_emb, targets, mask, _ = _data()
    weights = _weights(mask)
    per_tile = live_kd.live_terms_fn(t_emb, nll=True, kd=True, top1=True, temperature=tau)
    inputs = {tiled_loss.TARGETS: targets, live_kd.TEACHER_HIDDEN: t_hidden}

    def fused(h, e):
        return tiled_loss.tiled_weighted_loss(h, e, per_tile, inputs, weights, tile_tokens)[0]

    def reference(h, e):
        return _reference_live(h, e, t_hidden, t_emb, targets, weights, tau)

    value, (g_h, g_e) = jax.value_and_grad(fused, argnums=(0, 1))(hidden, emb)
    ref_value, (r_h, r_e) = jax.value_and_grad(reference, argnums=(0, 1))(hidden, emb)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_h, r_h, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_e, r_e, rtol=1e-4, atol=1e-6)


def test_stored_topk_equals_weighted_tiled_logit_losses_and_returns_the_terms():
    hidden, emb, _, _, targets, mask, topk = _data(1)
    weights = _weights(mask)
    per_tile = tiled_loss.logit_terms_fn(nll=True, kd=True, top1=True, tail="bucket")
    inputs = {tiled_loss.TARGETS: targets, tiled_loss.TEACHER: topk}

    def fused(h, e):
        return tiled_loss.tiled_weighted_loss(h, e, per_tile, inputs, weights, 10)

    def old(h, e):  # The path the trainer takes today: per-token terms, then weighed.
        terms = tiled_loss.tiled_logit_losses(h, e, per_tile, inputs, 10)
        return sum(jnp.sum(weights[k] * terms[k]) for k in weights)

    (value, terms), grads = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(hidden, emb)
    ref_value, ref_grads = jax.value_and_grad(old, argnums=(0, 1))(hidden, emb)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    logits = jnp.einsum("btd,vd->btv", hidden, emb)
    np.testing.assert_allclose(terms["nll"], losses.nll(logits, targets), rtol=1e-5, atol=1e-6)
    assert set(terms) == {"nll", "kd", "top1"}


def _unembeds(jaxpr, mult=1):
    """Matmuls with a V-sized axis in a jaxpr (scan bodies times their length)."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            n += _unembeds(eqn.params["jaxpr"].jaxpr, mult * eqn.params["length"])
            continue
        for sub in eqn.params.values():
            if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                n += _unembeds(sub.jaxpr, mult)
            elif hasattr(sub, "eqns"):
                n += _unembeds(sub, mult)
        if eqn.primitive.name == "dot_general":
            shapes = [v.aval.shape for v in (*eqn.invars, *eqn.outvars)]
            n += mult * any(V in s for s in shapes)
    return n


def test_live_gradient_unembeds_each_tile_four_times_not_six():
    """Per tile: student logits, its two gradient products, the teacher's logits once
    (the tiled_logit_losses path recomputes both logits in the backward pass: 6)."""
    hidden, emb, t_hidden, t_emb, targets, mask, _ = _data()
    weights = _weights(mask)
    per_tile = live_kd.live_terms_fn(t_emb, nll=True, kd=True)
    inputs = {tiled_loss.TARGETS: targets, live_kd.TEACHER_HIDDEN: t_hidden}

    def fused(h, e):
        return tiled_loss.tiled_weighted_loss(h, e, per_tile, inputs, weights, 8)[0]

    def old(h, e):
        terms = tiled_loss.tiled_logit_losses(h, e, per_tile, inputs, 8)
        return sum(jnp.sum(weights[k] * terms[k]) for k in weights)

    tiles = 3  # 8 tokens per tile over B=2 rows: 4 positions, T=12.
    assert (
        _unembeds(jax.make_jaxpr(jax.grad(fused, argnums=(0, 1)))(hidden, emb).jaxpr) == 4 * tiles
    )
    assert _unembeds(jax.make_jaxpr(jax.grad(old, argnums=(0, 1)))(hidden, emb).jaxpr) == 6 * tiles


def test_weight_of_another_shape_is_refused():
    hidden, emb, _, _, targets, _, _ = _data()
    per_tile = tiled_loss.logit_terms_fn(nll=True)
    with pytest.raises(ModelInputError, match=r"weight 'nll' has shape \(2,\)"):
        tiled_loss.tiled_weighted_loss(
            hidden, emb, per_tile, {tiled_loss.TARGETS: targets}, {"nll": jnp.ones(B)}, 8
        )
