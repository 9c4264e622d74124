"""Pure per-token loss functions for NLL, top-k KD and hidden-state distillation.

Every function here maps arrays to *per-token* values (shape = the leading
axes of its inputs, e.g. ``[B, T]``, or ``[N]`` inside a token tile); none of
them averages, masks or applies the method weights (α, τ², γ). The trainer
composes them per method (docs/DESIGN.md §1) and takes the masked mean with
``masked_mean``. All arithmetic is float32 whatever the input dtype.

Stable signatures (the trainer codes against these)::

    nll(logits_BxTxV, targets_BxT) -> [B, T]
    kd_topk(student_logits_BxTxV, teacher: signals.TopkSignal,
            temperature, tail="zero", divergence="forward_kl") -> [B, T]
    normalized_mse(pred_BxTxD, target_BxTxD, eps=1e-6, reduction="mean") -> [B, T]
    top1_agreement(student_logits_BxTxV, teacher: signals.TopkSignal) -> [B, T] (0./1.)
    masked_mean(values_BxT, mask_BxT) -> scalar

The teacher arrives as the typed value ``decode.decode_batch`` made of the
stored arrays (``signals.TopkSignal``: ``ids`` [..., K], ``logprobs`` [..., K]),
handed through ``tiled_loss`` unchanged; the setting names (tail, divergence,
reduction) are ``trainer.training.loss_options``'s.

Leading axes are arbitrary: ``[B, T, V]`` and ``[N, V]`` both work, which is
what lets ``trainer.training.tiled_loss`` call these on flattened token tiles.

The next-token shift is the caller's job: ``targets_BxT[:, i]`` must already
be the token that position ``i`` predicts (``tokens[:, i + 1]``), exactly as
the store's top-k at position ``i`` is the teacher's prediction of token
``i + 1``.

Tempered tail mass (``tail="bucket"`` at τ ≠ 1). The bucket class needs the
teacher's tempered tail ``S = Σ_{v∉top-k} p_v^{1/τ}``; the store keeps only
its τ=1 mass ``m = 1 − Σ_k p_k``, so S is not known exactly. What is known:
every tail entry is ≤ c = min(p_min, m) (p_min the smallest stored
probability; the top-k is sorted) and there are n = V − K of them. For
t = 1/τ > 1 the power sum is smallest when the tail is spread evenly and
largest when it is packed into entries of size c (and the other way round for
t < 1), so S lies between ``S_even = n·(m/n)^t`` and ``S_packed = m·c^(t−1)``.
We use their geometric mean, ``log S = log m + (t−1)·½(log c + log m − log n)``
(``tempered_tail_logmass``): exact at τ = 1 (both bounds are m) and for K = V
(no tail), off by at most ½|log(S_packed/S_even)| in log S otherwise; on a
Zipf(1) tail (k=32, V=2048, τ=0.5) it is within 10% of the true S where either
bound is off by 3-4x. tests/losses/test_losses_tempered_bucket.py checks it
against the full-vocabulary KL. ``store.objective_penalty`` reports what the
remaining uncertainty can cost the objective's optimum.

Top-k conventions (store contract, docs/INTERFACES.md): ``topk_logprobs`` are
teacher log-probabilities at τ=1 sorted descending; slots dropped by a top-p
truncation hold ``-inf`` (and id 0). Such slots get weight 0 everywhere, with
no NaN in the value or the gradient; a token with no finite slot at all gets
a KD value of 0 (the caller's mask should normally exclude it anyway).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from trainer.model.errors import ConfigError
from trainer.training import loss_options, signals

# A finite stand-in for -inf: keeps logsumexp and its gradient NaN-free when
# every entry of a row is masked, while exp(_NEG - anything finite) == 0.
_NEG = -1e30
# Floor for the bucket-class log-mass (log 1e-30): a tail that is exactly 0 on
# both sides (K = V, or fp16 rounding pushing Σp past 1) then contributes 0
# instead of 0·(−inf) or a spurious 1e-30·1e30.
_LOG_TINY = -69.07755278982137


def nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood ``-log softmax(logits)[target]``.

    Args:
      logits_BxTxV: student logits, any float dtype (upcast to fp32).
      targets_BxT: int token ids, already shifted by the caller (the token each
        position predicts).

    Returns:
      fp32 ``[B, T]`` of −log p(target).
    """
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    picked_BxTx1 = jnp.take_along_axis(
        logp_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1
    )
    return -picked_BxTx1[..., 0]


def _masked_logsumexp(x_BxTxK: jax.Array, valid_BxTxK: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(jnp.where(valid_BxTxK, x_BxTxK, _NEG), axis=-1)


def _teacher_support_logprobs(
    topk_logprobs_BxTxK: jax.Array, valid_BxTxK: jax.Array, tau: float
) -> jax.Array:
    """log softmax(logprob/τ) over the finite slots; 0 (unused) elsewhere."""
    scaled_BxTxK = jnp.where(valid_BxTxK, topk_logprobs_BxTxK / tau, _NEG)
    logp_BxTxK = scaled_BxTxK - jax.nn.logsumexp(scaled_BxTxK, axis=-1, keepdims=True)
    return jnp.where(valid_BxTxK, logp_BxTxK, 0.0)


def _student_tail_logprob(
    logp_BxTxV: jax.Array, topk_ids_BxTxK: jax.Array, valid_BxTxK: jax.Array
) -> jax.Array:
    """log of the student's mass on vocabulary entries *outside* the support.

    Summed directly over the off-support entries (not as 1 − Σ p at the ids),
    so a tail of 1e-9 is still resolved in fp32.
    """
    lead_shape = logp_BxTxV.shape[:-1]
    vocab = logp_BxTxV.shape[-1]
    k = topk_ids_BxTxK.shape[-1]
    logp_NxV = logp_BxTxV.reshape(-1, vocab)
    ids_NxK = topk_ids_BxTxK.reshape(-1, k)
    valid_NxK = valid_BxTxK.reshape(-1, k)
    rows_Nx1 = jnp.arange(logp_NxV.shape[0])[:, None]
    # .max, not .set: an invalid slot's id 0 must not un-mark a valid id 0.
    in_support_NxV = jnp.zeros(logp_NxV.shape, bool).at[rows_Nx1, ids_NxK].max(valid_NxK)
    tail_N = jax.nn.logsumexp(jnp.where(in_support_NxV, _NEG, logp_NxV), axis=-1)
    return tail_N.reshape(lead_shape)


def _log1mexp(x: jax.Array) -> jax.Array:
    """log(1 − exp(x)) for x ≤ 0, stable on both ends; −large when x → 0."""
    x = jnp.minimum(x, -1e-30)
    return jnp.where(x > -0.6931, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def tempered_tail_logmass(
    log_tail_mass: jax.Array, log_min_prob: jax.Array, num_tail: jax.Array, tau: float
) -> jax.Array:
    """log of the estimated teacher tail power sum ``Σ_{v∉top-k} p_v^{1/τ}``.

    The geometric mean of the two extreme tails consistent with the stored
    top-k (module docstring); exact at τ = 1. The formula lives once here and
    once, in numpy, in ``store.objective_penalty.tempered_tail_logmass``
    (store/ cannot import JAX); tests check that both agree.

    Args:
      log_tail_mass: log m, the τ=1 tail mass ``1 − Σ exp(logprob)``.
      log_min_prob: log of the smallest stored probability.
      num_tail: V − K, entries outside the support (≥ 1; 0 means no tail).
      tau: the temperature (Python float).

    Returns:
      log S (−large where num_tail == 0).
    """
    if tau == 1.0:
        return log_tail_mass
    t = 1.0 / tau
    log_c = jnp.minimum(log_min_prob, log_tail_mass)
    log_n = jnp.log(jnp.maximum(num_tail, 1).astype(jnp.float32))
    log_s = log_tail_mass + (t - 1.0) * 0.5 * (log_c + log_tail_mass - log_n)
    return jnp.where(num_tail > 0, log_s, _NEG)


def _xlogy_diff(
    p_weight: jax.Array, logp: jax.Array, logq: jax.Array, valid: jax.Array
) -> jax.Array:
    """Σ p·(log p − log q) over valid classes, with 0·anything = 0 exactly."""
    term = jnp.where(valid, p_weight * (logp - logq), 0.0)
    return jnp.sum(term, axis=-1)


def _forward_kl(logp_BxTxC: jax.Array, logq_BxTxC: jax.Array, valid_BxTxC: jax.Array) -> jax.Array:
    return _xlogy_diff(jnp.exp(logp_BxTxC), logp_BxTxC, logq_BxTxC, valid_BxTxC)


def _reverse_kl(logp_BxTxC: jax.Array, logq_BxTxC: jax.Array, valid_BxTxC: jax.Array) -> jax.Array:
    # Generalised KL for unnormalised measures, Σ q·log(q/p) − q + p: equal to
    # KL(q‖p) when q sums to 1 over the classes (renormalize, bucket, K = V),
    # and for tail="zero" it adds the student's off-support mass 1 − Σq.
    # Without the linear terms the minimiser would be q = p/e (the loss
    # would reward pushing student mass off the support) and values go < 0.
    q_BxTxC = jnp.exp(logq_BxTxC)
    linear_BxTxC = jnp.where(valid_BxTxC, jnp.exp(logp_BxTxC) - q_BxTxC, 0.0)
    return _xlogy_diff(q_BxTxC, logq_BxTxC, logp_BxTxC, valid_BxTxC) + jnp.sum(
        linear_BxTxC, axis=-1
    )


def _jsd(logp_BxTxC: jax.Array, logq_BxTxC: jax.Array, valid_BxTxC: jax.Array) -> jax.Array:
    logm_BxTxC = jnp.logaddexp(logp_BxTxC, logq_BxTxC) - jnp.log(2.0)
    return 0.5 * (
        _forward_kl(logp_BxTxC, logm_BxTxC, valid_BxTxC)
        + _xlogy_diff(jnp.exp(logq_BxTxC), logq_BxTxC, logm_BxTxC, valid_BxTxC)
    )


# Each takes (log p_teacher, log q_student, valid) over the classes [..., C]
# and returns the per-token divergence [...]. Invalid classes carry finite
# placeholder log-probs, so gradients through the masked branch stay finite.
_DIVERGENCES: dict[loss_options.Divergence, Callable[..., jax.Array]] = {
    loss_options.Divergence.FORWARD_KL: _forward_kl,
    loss_options.Divergence.REVERSE_KL: _reverse_kl,
    loss_options.Divergence.JSD: _jsd,
}


def kd_topk(
    student_logits_BxTxV: jax.Array,
    teacher: signals.TopkSignal,
    temperature: float,
    tail: str | loss_options.TailMode = "zero",
    divergence: str | loss_options.Divergence = "forward_kl",
) -> jax.Array:
    """Per-token divergence between the stored teacher top-k and the student.

    Without the τ² and α factors: the method composes those. Divergence
    conventions over the support classes (the finite stored slots, plus the
    tail class for ``tail="bucket"``): forward ``Σ p(log p − log q)``;
    reverse ``Σ q(log q − log p) − q + p`` (the generalised KL, which is
    plain KL(q‖p) whenever q sums to 1 over the classes; with ``tail="zero"``
    it adds the student's off-support mass, so it stays ≥ 0 and is minimised
    at q = p); JSD ``½Σ p log(p/m) + ½Σ q log(q/m)``, ``m = (p + q)/2``
    (pointwise ≥ 0). With K = V and ``tail="zero"`` every divergence equals
    its full-softmax value.

    Args:
      student_logits_BxTxV: student logits (any float dtype; fp32 math).
      teacher: the stored top-k, ``ids`` [B, T, K] vocabulary ids (any int
        dtype) and ``logprobs`` [B, T, K] log-probs at τ=1, ``-inf`` in dropped slots.
      temperature: τ > 0; both sides use softmax(·/τ) (bucket at τ ≠ 1: the
        teacher's tempered tail is the documented estimate).
      tail: a ``TailMode`` or its name: "zero", "renormalize", "bucket".
      divergence: a ``Divergence`` or its name: "forward_kl", "reverse_kl", "jsd".

    Returns:
      fp32 ``[B, T]`` divergence per token (0 where no slot is finite).

    Raises:
      ConfigError: unknown tail/divergence or bad τ.
    """
    tail = loss_options.parse_tail_mode(tail)
    div_fn = _DIVERGENCES[loss_options.parse_divergence(divergence)]
    tau = loss_options.check_temperature(temperature, tail)

    teacher_BxTxK = teacher.logprobs.astype(jnp.float32)
    valid_BxTxK = jnp.isfinite(teacher_BxTxK)
    any_valid_BxT = jnp.any(valid_BxTxK, axis=-1)
    # A token with no finite slot (padding, or a store that dropped it) gets a
    # finite dummy teacher so every intermediate and gradient stays finite;
    # its value is replaced by 0 at the end, so the dummy never leaks.
    teacher_BxTxK = jnp.where(any_valid_BxT[..., None], teacher_BxTxK, 0.0)
    valid_BxTxK = valid_BxTxK | ~any_valid_BxT[..., None]
    # Dropped slots hold id 0 by contract; force it anyway so a gather never
    # reads out of range on garbage ids in masked slots.
    ids_BxTxK = jnp.where(valid_BxTxK, teacher.ids.astype(jnp.int32), 0)
    student_logp_BxTxV = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32) / tau, axis=-1)
    student_at_ids_BxTxK = jnp.take_along_axis(student_logp_BxTxV, ids_BxTxK, axis=-1)

    if tail is loss_options.TailMode.BUCKET:
        # τ = 1: the teacher's support probabilities are the stored ones as is
        # (no renormalisation) and the bucket holds the remaining mass. τ ≠ 1:
        # p_k^{1/τ} and the estimated tail power sum S, normalised together.
        log_tail_BxT = _log1mexp(_masked_logsumexp(teacher_BxTxK, valid_BxTxK))
        if tau == 1.0:
            logp_BxTxK = jnp.where(valid_BxTxK, teacher_BxTxK, 0.0)
            teacher_tail_BxT = jnp.maximum(log_tail_BxT, _LOG_TINY)
        else:
            num_tail_BxT = student_logits_BxTxV.shape[-1] - jnp.sum(valid_BxTxK, axis=-1)
            log_min_BxT = jnp.min(jnp.where(valid_BxTxK, teacher_BxTxK, 0.0), axis=-1)
            log_s_BxT = tempered_tail_logmass(
                jnp.maximum(log_tail_BxT, _LOG_TINY), log_min_BxT, num_tail_BxT, tau
            )
            scaled_BxTxK = jnp.where(valid_BxTxK, teacher_BxTxK / tau, _NEG)
            log_z_BxT = jnp.logaddexp(jax.nn.logsumexp(scaled_BxTxK, axis=-1), log_s_BxT)
            logp_BxTxK = jnp.where(valid_BxTxK, scaled_BxTxK - log_z_BxT[..., None], 0.0)
            teacher_tail_BxT = jnp.maximum(log_s_BxT - log_z_BxT, _LOG_TINY)
        student_tail_BxT = jnp.maximum(
            _student_tail_logprob(student_logp_BxTxV, ids_BxTxK, valid_BxTxK), _LOG_TINY
        )
        logp_BxTxC = jnp.concatenate([logp_BxTxK, teacher_tail_BxT[..., None]], axis=-1)
        logq_BxTxC = jnp.concatenate([student_at_ids_BxTxK, student_tail_BxT[..., None]], axis=-1)
        valid_BxTxC = jnp.concatenate([valid_BxTxK, jnp.ones_like(valid_BxTxK[..., :1])], axis=-1)
    else:
        logp_BxTxC = _teacher_support_logprobs(teacher_BxTxK, valid_BxTxK, tau)
        logq_BxTxC = student_at_ids_BxTxK
        if tail is loss_options.TailMode.RENORMALIZE:
            logq_BxTxC = logq_BxTxC - _masked_logsumexp(logq_BxTxC, valid_BxTxK)[..., None]
        valid_BxTxC = valid_BxTxK

    value_BxT = div_fn(logp_BxTxC, logq_BxTxC, valid_BxTxC)
    return jnp.where(any_valid_BxT, value_BxT, 0.0)


def normalized_mse(
    pred_BxTxD: jax.Array,
    target_BxTxD: jax.Array,
    eps: float = 1e-6,
    reduction: str | loss_options.HiddenReduction = "mean",
) -> jax.Array:
    """Per-token mean (or sum) over D of ``(pred/‖pred‖ − target/‖target‖)²``.

    Both sides are normalised over the feature axis (the Gemma 3 residual
    stream is large, ~3e5 mean square at the teacher's median layer, so the
    unnormalised MSE would be dominated by scale). ``x · rsqrt(‖x‖² + eps)``
    keeps zero vectors (padding) at 0 with a finite gradient; eps is far below
    any real activation's squared norm. The result lies in [0, 4/D] with
    ``reduction="mean"`` (the paper's), in [0, 4] with ``"sum"`` (see
    ``HiddenReduction``).

    Args:
      pred_BxTxD: regressor output (student side), any float dtype.
      target_BxTxD: teacher activation, same shape (fp32 math).
      eps: added to the squared norm.
      reduction: a ``HiddenReduction`` or its name.

    Returns:
      fp32 ``[B, T]``.
    """
    reduce_fn = {
        loss_options.HiddenReduction.MEAN: jnp.mean,
        loss_options.HiddenReduction.SUM: jnp.sum,
    }[loss_options.parse_hidden_reduction(reduction)]
    if pred_BxTxD.shape != target_BxTxD.shape:
        raise ConfigError(
            f"normalized_mse shapes differ: pred {pred_BxTxD.shape} vs target "
            f"{target_BxTxD.shape}; map the student hidden to d_T with the regressor first"
        )

    def unit(x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)

    diff_BxTxD = unit(pred_BxTxD) - unit(target_BxTxD)
    return reduce_fn(diff_BxTxD * diff_BxTxD, axis=-1)


def top1_agreement(student_logits_BxTxV: jax.Array, teacher: signals.TopkSignal) -> jax.Array:
    """1.0 where the student's argmax equals the teacher's top-1 id, else 0.0.

    The store keeps top-k sorted descending, so slot 0 is the teacher argmax.
    A metric: no gradient flows (argmax is piecewise constant).
    """
    student_top1_BxT = jnp.argmax(student_logits_BxTxV, axis=-1)
    return (student_top1_BxT == teacher.ids[..., 0].astype(student_top1_BxT.dtype)).astype(
        jnp.float32
    )


def masked_mean(values_BxT: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
    """Mean of per-token values over the mask (all tokens if None); 0 if empty."""
    values_BxT = values_BxT.astype(jnp.float32)
    if mask_BxT is None:
        return jnp.mean(values_BxT)
    mask_BxT = mask_BxT.astype(jnp.float32)
    # where() (not values·mask) so a NaN/inf in a masked-out slot cannot leak.
    total = jnp.sum(jnp.where(mask_BxT > 0, values_BxT * mask_BxT, 0.0))
    return total / jnp.maximum(jnp.sum(mask_BxT), 1.0)
