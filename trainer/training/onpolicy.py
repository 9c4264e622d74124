"""On-policy distillation terms on rollouts: which tokens they weigh, and OPD's estimator.

A rollout row is a prompt (corpus text) followed by the student's completion;
`Batch.loss_mask[r, t]` is 1 where token t is a completion token (the store's
`loss_mask`; prompt and padding 0). The on-policy terms (trainer.training.methods
plans them, trainer.training.phase_loss composes them):

    OPD   reverse KL(q_S ‖ p_T) of the next-token distributions at τ = 1:
          exact over the full vocabulary with a live teacher (live_kd), else
          the single-sample estimator  log q(y) − log p(y)  at the realized
          token y (the teacher's log p(y) is the store's `token_logprob`).
    OPRD  normalized MSE between W_R h_S (linear regressor) and the teacher's
          hidden state at the chosen layer, optionally + β·OPD.

Which positions each term weighs (the agreed shift rule): a logit term at
position i predicts token i+1, so it weighs loss_mask[:, i+1] (the last
position 0); a hidden-state term at position i weighs loss_mask[:, i].

Mixing with off-policy data (GKD's λ, `onpolicy.lam`): every batch is mixed,
not every step, L = λ·L_on + (1−λ)·L_off, with L_on the on-policy terms'
means over completion tokens and L_off the off-policy objective
((1−α)·NLL + α·τ²·KD, as the `kd` method) over the row's prompt, the corpus
text that precedes its first completion token (`prompt_mask`; padding after a
completion is not in it). GKD draws on- or off-policy data per step with
probability λ; the per-batch mix has the same expected objective, no extra
variance from the coin, and needs no second store or second compiled step.
Rollout rows must therefore pad after the completion, never before the prompt.

The single-sample estimator. For y ~ q (the student's own sample, τ = 1),
E_y[log q(y) − log p(y)] = KL(q ‖ p): its value is unbiased. Its gradient is
not the gradient of that value at the sampled y (E_y[∇ log q(y)] = 0): the
gradient of KL(q ‖ p) is E_y[(log q(y) − log p(y)) ∇ log q(y)], the
score-function (REINFORCE) form with the per-token "reward" −(log q − log p),
as in the tinker cookbook's per-token OPD. `opd_estimate` returns a value
equal to the estimate whose gradient is that form. Both hold for samples of
the current student: a rollout written by an older student (staleness > 0)
makes them biased by the policy lag.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The agreed store names (issue 20): the tokens-family array and the signal field.
LOSS_MASK = "loss_mask"
TOKEN_LOGPROB = "token_logprob"


def logit_mask(loss_mask_BxT: jax.Array) -> jax.Array:
    """[B, T] weights of a logit term on completion tokens: position i weighs loss_mask[:, i+1]."""
    m = loss_mask_BxT.astype(jnp.float32)
    return jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)


def hidden_mask(loss_mask_BxT: jax.Array) -> jax.Array:
    """[B, T] weights of a hidden-state term on completion tokens: position i weighs loss_mask[:, i]."""
    return loss_mask_BxT.astype(jnp.float32)


def prompt_mask(loss_mask_BxT: jax.Array) -> jax.Array:
    """[B, T] 1 on the prompt: tokens before the row's first completion token.

    A row without completion tokens is all prompt (corpus text).
    """
    return jnp.cumprod(1.0 - loss_mask_BxT.astype(jnp.float32), axis=1)


def offpolicy_logit_mask(loss_mask_BxT: jax.Array) -> jax.Array:
    """[B, T] weights of the off-policy logit terms: position i predicts a prompt token i+1."""
    return logit_mask(prompt_mask(loss_mask_BxT))


def opd_estimate(student_logprob_BxT: jax.Array, teacher_logprob_BxT: jax.Array) -> jax.Array:
    """Per-token single-sample reverse-KL estimate, with the score-function gradient.

    Args:
        student_logprob_BxT: log q(y) of the realized next token (differentiable).
        teacher_logprob_BxT: log p(y), the store's token_logprob (no gradient).

    Returns:
        fp32 [B, T] whose value is log q(y) − log p(y) and whose gradient is
        (log q(y) − log p(y)) ∇ log q(y) (module docstring).
    """
    logq = student_logprob_BxT.astype(jnp.float32)
    estimate = jax.lax.stop_gradient(logq - teacher_logprob_BxT.astype(jnp.float32))
    return estimate + estimate * (logq - jax.lax.stop_gradient(logq))
