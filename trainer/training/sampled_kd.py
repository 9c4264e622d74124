"""KD from stored sampled teacher logits: the unbiased forward-KL estimator.

The store's ``sampled/*`` family (store/sampled.py, arXiv 2503.16870 "Sparse Logit
Sampling") holds, per position, the DISTINCT ids of S i.i.d. draws from the
teacher's full softmax at τ = 1, how many of the S draws gave each id, and the
teacher's τ=1 log-prob of each. With ``w_s = count_s / S`` (``E[w(x)] = p(x)``
for every vocabulary entry x) the per-position term

    KD = Σ_s w_s · (log p(id_s) − log q(id_s))

is an unbiased estimate of KL(p ‖ q) over the FULL vocabulary, and its
gradient w.r.t. the student logits, ``q − ŵ`` (ŵ the empirical distribution
of the draws), is an unbiased estimate of the exact gradient ``q − p``. There
is no tail: in expectation the support is the whole vocabulary, so the top-k
``loss.tail`` modes do not apply to this signal (the field is inert here,
as γ is for KD). The student side is the full-vocabulary log-softmax gathered
at the ids, exactly as ``losses.kd_topk`` gathers it, so tiling and memory
are those of the top-k path (``tiled_loss``).

What the estimator cannot do, refused by ``loss_options.check_sampled_settings`` rather than
approximated: τ ≠ 1 (the draws come from the τ=1 teacher; self-normalised
importance weights would need the unknown Σ p^{1/τ} and be biased at small
S) and divergences other than forward KL (reverse KL and JSD need the
teacher's probability wherever the STUDENT puts mass, which the draws do
not give).

The stored log-probs are float16: their rounding (relative 2^-11) moves the
VALUE by at most ~5e-4·|lp| per slot and never the gradient, in which the
teacher term is a constant (``q − ŵ`` involves the counts only).

Empty slots (count 0, id 0, log-prob −inf by contract) get weight 0 with no
NaN in the value or gradient; a position with no draw at all gets 0.

Stable signatures::

    kd_sampled(student_logits_BxTxV, teacher: signals.SampledSignal) -> [B, T]
    top1_agreement_sampled(student_logits_BxTxV, teacher: signals.SampledSignal) -> [B, T]

``teacher`` is the typed value ``decode.decode_batch`` made of the stored
``sampled/*`` arrays (``ids``, ``counts``, ``logprobs``, each [..., S]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainer.training import signals


def _weights(sampled_counts_BxTxS: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(w = count / Σcount, valid slot mask); Σcount is S by the store contract."""
    counts_BxTxS = sampled_counts_BxTxS.astype(jnp.float32)
    valid_BxTxS = counts_BxTxS > 0
    total_BxTx1 = jnp.sum(counts_BxTxS, axis=-1, keepdims=True)
    return counts_BxTxS / jnp.maximum(total_BxTx1, 1.0), valid_BxTxS


def kd_sampled(student_logits_BxTxV: jax.Array, teacher: signals.SampledSignal) -> jax.Array:
    """Per-token unbiased estimate of KL(p_teacher ‖ q_student) at τ = 1.

    Without the α factor (τ² = 1 here): the method composes it.

    Args:
      student_logits_BxTxV: student logits (any float dtype; fp32 math).
      teacher: the stored draws, each [B, T, S]: ``ids`` the distinct drawn ids
        (any int dtype), empty slots id 0; ``counts`` draws per id (any int
        dtype), 0 in empty slots, sum S; ``logprobs`` the teacher's τ=1
        log-probs of the ids, −inf in empty slots.

    Returns:
      fp32 ``[B, T]`` (0 where a position has no draw).
    """
    w_BxTxS, valid_BxTxS = _weights(teacher.counts)
    # Empty slots: id forced to 0 (a gather never reads garbage) and the
    # teacher log-prob to 0 (−inf · 0 would be NaN); both carry weight 0.
    ids_BxTxS = jnp.where(valid_BxTxS, teacher.ids.astype(jnp.int32), 0)
    teacher_BxTxS = jnp.where(valid_BxTxS, teacher.logprobs.astype(jnp.float32), 0.0)
    student_logp_BxTxV = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
    student_BxTxS = jnp.take_along_axis(student_logp_BxTxV, ids_BxTxS, axis=-1)
    term_BxTxS = jnp.where(valid_BxTxS, w_BxTxS * (teacher_BxTxS - student_BxTxS), 0.0)
    return jnp.sum(term_BxTxS, axis=-1)


def top1_agreement_sampled(
    student_logits_BxTxV: jax.Array, teacher: signals.SampledSignal
) -> jax.Array:
    """1.0 where the student's argmax is the most probable DRAWN id, else 0.0.

    The drawn ids carry their exact teacher log-probs, so the most probable
    of them is the teacher's argmax whenever that was drawn (probability
    ``1 − (1 − p_max)^S``, e.g. > 0.99 for p_max = 0.32 at S = 12); then the
    metric equals the top-k ``top1_agreement``. A position with no draw gives 0.
    A metric: no gradient flows.
    """
    _, valid_BxTxS = _weights(teacher.counts)
    teacher_BxTxS = jnp.where(valid_BxTxS, teacher.logprobs.astype(jnp.float32), -jnp.inf)
    best_BxTx1 = jnp.argmax(teacher_BxTxS, axis=-1)[..., None]
    best_id_BxT = jnp.take_along_axis(teacher.ids.astype(jnp.int32), best_BxTx1, axis=-1)[..., 0]
    student_top1_BxT = jnp.argmax(student_logits_BxTxV, axis=-1).astype(jnp.int32)
    agree_BxT = (student_top1_BxT == best_id_BxT) & jnp.any(valid_BxTxS, axis=-1)
    return agree_BxT.astype(jnp.float32)
