"""Logit losses against a live teacher's full vocabulary, one token tile at a time.

    per_tile_fn = live_terms_fn(teacher_embedding_VxD, nll=True, kd=True, top1=True,
                                opd=False, temperature=τ, divergence="forward_kl")
    terms = tiled_loss.tiled_logit_losses(
        student_final_BxTxD, student_embedding_VxD, per_tile_fn,
        {tiled_loss.TARGETS: targets_BxT, TEACHER_HIDDEN: teacher_final_BxTxD},
        tile_tokens=config.loss.token_tile)                  # {name: fp32 [B, T]}

The teacher's final hidden state rides along with the student's as a token
input, so each tile unembeds both (`tiled_loss.tile_logits`, the matmul of
`model.unembed`): [tile, V] logits of each side exist for one tile at a time,
never [B, T, V]. The tile body is rematerialised in the backward pass
(tiled_loss), which recomputes the teacher's tile logits too (trainer.flops
counts that second unembed). No gradient reaches the teacher: its logits are
`stop_gradient`ed here, and its params are no trainable.

Divergences over the whole vocabulary at temperature τ, p = softmax(t/τ)
(teacher), q = softmax(s/τ) (student), per token:

    forward_kl  Σ_v p (log p − log q)
    reverse_kl  Σ_v q (log q − log p)
    jsd         ½ Σ_v p log(p/m) + ½ Σ_v q log(q/m),   m = ½(p + q)

exactly `losses.kd_topk` with K = V (no tail to estimate, no sampled τ = 1
limit). `topk=K > 0` instead restricts the live teacher to its own top-K
log-probs at τ = 1 and hands them to `losses.kd_topk` with `tail`, which is
the stored top-K signal without its storage rounding (what top-K truncation
alone costs a student). `opd` is the on-policy term: the reverse KL at τ = 1
over the full vocabulary (trainer.training.onpolicy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainer.model.errors import ModelInputError
from trainer.training import loss_options, losses, tiled_loss
from trainer.training.signals import TopkSignal

# Token-input key of the teacher's final hidden state [B, T, D_T] (next to tiled_loss.TARGETS).
TEACHER_HIDDEN = "teacher_hidden"
# Name scope of the teacher's tile unembedding (profiles, HLO op names, the bench's counts).
TEACHER_UNEMBED_SCOPE = "live_teacher_unembed"


def full_vocab_divergence(
    student_logits_NxV: jax.Array,
    teacher_logits_NxV: jax.Array,
    temperature: float,
    divergence: str | loss_options.Divergence,
) -> jax.Array:
    """Per-token divergence of the tempered teacher and student over all V classes.

    Args:
        student_logits_NxV: student logits (fp32 math), any leading axes.
        teacher_logits_NxV: teacher logits, same shape.
        temperature: τ > 0, both sides.
        divergence: forward_kl | reverse_kl | jsd (module docstring).

    Returns:
        fp32 [N], without τ² (the method applies it).
    """
    div = loss_options.parse_divergence(divergence)
    tau = float(temperature)
    logq = jax.nn.log_softmax(student_logits_NxV.astype(jnp.float32) / tau, axis=-1)
    logp = jax.nn.log_softmax(teacher_logits_NxV.astype(jnp.float32) / tau, axis=-1)
    p, q = jnp.exp(logp), jnp.exp(logq)
    if div is loss_options.Divergence.FORWARD_KL:
        return jnp.sum(p * (logp - logq), axis=-1)
    if div is loss_options.Divergence.REVERSE_KL:
        return jnp.sum(q * (logq - logp), axis=-1)
    logm = jnp.logaddexp(logp, logq) - jnp.log(2.0)
    return 0.5 * jnp.sum(p * (logp - logm), axis=-1) + 0.5 * jnp.sum(q * (logq - logm), axis=-1)


def teacher_topk(teacher_logits_NxV: jax.Array, k: int) -> TopkSignal:
    """The teacher's top-k at τ = 1 as the store would hold it (sorted descending, float32)."""
    logp_NxV = jax.nn.log_softmax(teacher_logits_NxV.astype(jnp.float32), axis=-1)
    logprobs_NxK, ids_NxK = jax.lax.top_k(logp_NxV, k)
    return TopkSignal(ids=ids_NxK.astype(jnp.int32), logprobs=logprobs_NxK)


def live_terms_fn(
    teacher_embedding_VxD: jax.Array,
    *,
    nll: bool = True,
    kd: bool = False,
    top1: bool = False,
    opd: bool = False,
    temperature: float = 1.0,
    divergence: str | loss_options.Divergence = "forward_kl",
    tail: str | loss_options.TailMode = "bucket",
    topk: int = 0,
) -> tiled_loss.PerTileFn:
    """A per-tile function (tiled_loss) of NLL, KD, top-1 and OPD against the live teacher.

    Args:
        teacher_embedding_VxD: the teacher's (tied) embedding table, closed over.
        nll, kd, top1, opd: the terms returned ({"nll", "kd", "top1", "opd"}: fp32 [N]).
        temperature, divergence: the KD term's (opd is reverse KL at τ = 1).
        tail: the KD tail mode when restricted to the teacher's top-K.
        topk: 0: KD over the full vocabulary; K > 0: over the teacher's top-K.

    Raises:
        ModelInputError: no term requested.
        ConfigError: bad divergence / tail / temperature.
    """
    if not (nll or kd or top1 or opd):
        raise ModelInputError("live_terms_fn needs at least one of nll, kd, top1, opd")
    divergence = loss_options.parse_divergence(divergence)
    tail = loss_options.parse_tail_mode(tail)
    temperature = loss_options.check_temperature(temperature, tail)

    def per_tile_fn(logits_NxV, inputs):
        out = {}
        if nll:
            out["nll"] = losses.nll(logits_NxV, inputs[tiled_loss.TARGETS])
        if not (kd or top1 or opd):
            return out
        with jax.named_scope(TEACHER_UNEMBED_SCOPE):
            teacher_NxV = jax.lax.stop_gradient(
                tiled_loss.tile_logits(inputs[TEACHER_HIDDEN], teacher_embedding_VxD)
            )
        if kd and topk:
            signal = teacher_topk(teacher_NxV, topk)
            out["kd"] = losses.kd_topk(logits_NxV, signal, temperature, tail, divergence)
        elif kd:
            out["kd"] = full_vocab_divergence(logits_NxV, teacher_NxV, temperature, divergence)
        if top1:
            out["top1"] = (
                jnp.argmax(logits_NxV, axis=-1) == jnp.argmax(teacher_NxV, axis=-1)
            ).astype(jnp.float32)
        if opd:
            out["opd"] = full_vocab_divergence(
                logits_NxV, teacher_NxV, 1.0, loss_options.Divergence.REVERSE_KL
            )
        return out

    required = [tiled_loss.TARGETS] if nll else []
    if kd or top1 or opd:
        required.append(TEACHER_HIDDEN)
    per_tile_fn.required_inputs = tuple(required)  # type: ignore[attr-defined]
    return per_tile_fn
