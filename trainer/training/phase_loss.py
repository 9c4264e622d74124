"""One phase's loss on a batch: the terms of a `methods.Phase` composed (docs/DESIGN.md §1).

    loss, metrics = loss_fn(params, regressor, stored_batch, step, phase=phase, config=config,
                            model_cfg=model_cfg, num_steps=n)      # inside the jitted step
    counts = token_counts(stored_batch, phase)                     # gradient accumulation

trainer.training.methods plans what each method's phases hold (the terms, the
store fields, the regressor, the schedules); this module evaluates them: the
student forward (the first l_S blocks only when no logit term runs), the
hidden-state term, the token-tiled logit terms (stored or live teacher), the
on-policy terms and λ's mix, each term's per-token mean.

Position convention: the store's top-k at position i predicts token i+1, as
does the student's logit at i. L_data uses positions 0..T-2 (the target of
the last position is not in the row); KL and top-1 use all T positions;
hidden-state terms use all T positions. On-policy phases weigh completion and
prompt tokens by the row's loss_mask (trainer.training.onpolicy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trainer.model import gemma3 as model
from trainer.model import regressors
from trainer.training import (
    decode,
    live_kd,
    live_teacher,
    loss_options,
    losses,
    onpolicy,
    tiled_loss,
)
from trainer.training.layer_match import regressor_key
from trainer.training.methods import Phase, alpha_at

# Metrics that are the same for every part of a batch (not per-token means).
CONSTANT_METRICS = ("alpha",)


def term_masks(tokens_BxT, phase: Phase, loss_mask_BxT=None) -> dict:
    """{term: [B, T] float mask of the tokens its mean runs over, None for all} of a phase.

    On-policy phases weigh completion tokens (on-policy terms) and prompt tokens
    (off-policy terms) by `loss_mask_BxT` (trainer.training.onpolicy).
    """
    masks: dict[str, jax.Array | None] = {}
    if phase.onpolicy:
        if phase.hidden_term:
            masks["hidden_mse"] = onpolicy.hidden_mask(loss_mask_BxT)
        if phase.opd_weight:
            masks["opd"] = onpolicy.logit_mask(loss_mask_BxT)
        if phase.data_term or phase.kd_term:
            masks["nll"] = onpolicy.offpolicy_logit_mask(loss_mask_BxT)
        if phase.kd_term:
            masks["kd"] = masks["top1_agreement"] = masks["nll"]
        return masks
    if phase.hidden_term:
        masks["hidden_mse"] = None
    if phase.data_term or phase.kd_term:
        # The last position's target is not in the row.
        masks["nll"] = jnp.ones(tokens_BxT.shape, jnp.float32).at[:, -1].set(0.0)
    if phase.kd_term:
        masks["kd"] = masks["top1_agreement"] = None
    return masks


def token_counts(batch, phase: Phase) -> dict:
    """{term: tokens its per-token mean divides by} over the whole `batch` (stored arrays).

    At least 1, as `losses.masked_mean` (a batch without completion tokens adds 0).
    """
    tokens_BxT = batch["tokens"]
    if not phase.onpolicy:
        loss_mask_BxT = None
    elif onpolicy.LOSS_MASK in batch:
        loss_mask_BxT = batch[onpolicy.LOSS_MASK]
    else:  # A store without a loss_mask: every token a completion token, as decode reads it.
        loss_mask_BxT = jnp.ones(tokens_BxT.shape, jnp.float32)
    return {
        k: jnp.asarray(tokens_BxT.size, jnp.float32) if m is None else jnp.maximum(jnp.sum(m), 1.0)
        for k, m in term_masks(tokens_BxT, phase, loss_mask_BxT).items()
    }


def loss_fn(
    params,
    regressor,
    batch,
    step,
    *,
    phase: Phase,
    config,
    model_cfg,
    num_steps: int,
    encoding: decode.Encoding = decode.EXACT,
    counts=None,
    teacher_params=None,
    teacher_cfg=None,
):
    """Total loss of one batch for a phase, and per-term metrics.

    Args:
        params: student params.
        regressor: regressor params ({} if the phase has none).
        batch: {stored array name: array} of the phase's `fields`, as the loader reads them.
        step: int32 scalar, step within the phase (for α).
        phase: the static Phase.
        config: trainer config (τ, α, γ, tail, divergence, token_tile).
        model_cfg: student ModelConfig.
        num_steps: steps in this phase (α schedule length).
        encoding: how the batch's stored arrays are encoded (decoded here, on device).
        counts: None: each term is its mean over `batch`. A `token_counts` dict
            of a larger batch that `batch` is part of (gradient accumulation):
            each term is its sum over `batch` divided by that count.
        teacher_params, teacher_cfg: the live teacher (phase.live; no gradient).

    Returns:
        (loss scalar, metrics dict of scalars).
    """
    # The loader ships the stored arrays (codes + side arrays); decode on device, into typed signals.
    decoded = decode.decode_batch(batch, decode.BatchSpec(encoding=encoding, fields=phase.fields))
    return batch_loss(
        params,
        regressor,
        decoded,
        step,
        phase=phase,
        config=config,
        model_cfg=model_cfg,
        num_steps=num_steps,
        counts=counts,
        teacher_params=teacher_params,
        teacher_cfg=teacher_cfg,
    )


def batch_loss(
    params,
    regressor,
    batch,
    step,
    *,
    phase: Phase,
    config,
    model_cfg,
    num_steps: int,
    counts=None,
    teacher_params=None,
    teacher_cfg=None,
):
    """`loss_fn` on a decoded `signals.Batch` (the same arguments otherwise)."""
    tokens_BxT = batch.tokens
    masks = term_masks(tokens_BxT, phase, batch.loss_mask if phase.onpolicy else None)

    def mean(term, values_BxT):
        if counts is None:
            return losses.masked_mean(values_BxT, masks[term])
        values_BxT = values_BxT.astype(jnp.float32)
        if masks[term] is not None:  # where(), as masked_mean: no NaN leaks from masked slots.
            values_BxT = jnp.where(masks[term] > 0, values_BxT * masks[term], 0.0)
        return jnp.sum(values_BxT) / counts[term]

    teacher = None
    if phase.live:
        teacher = live_teacher.forward(
            teacher_params,
            tokens_BxT,
            teacher_cfg,
            hidden_layers=phase.teacher_layers,
            logits=phase.teacher_logits,
        )
    capture = tuple(sorted(set(phase.student_layers))) if phase.hidden_term else ()
    out = model.forward(
        params, tokens_BxT, model_cfg, capture_layers=capture, num_blocks=phase.num_blocks
    )
    metrics = {}
    # `loss` holds the on-policy terms of an on-policy phase (λ-weighted at the end), and
    # every term of the others; `off` the off-policy terms of an on-policy phase.
    loss = jnp.zeros((), jnp.float32)
    off = jnp.zeros((), jnp.float32)
    if phase.hidden_term:
        layer_terms = {}
        for layer_t, layer_s in zip(phase.hidden_layers, phase.student_layers, strict=True):
            h_s_BxTxD = out.captured[layer_s]
            reg = regressor[regressor_key(layer_t)] if phase.per_layer_regressors else regressor
            pred_BxTxDt = regressors.apply_regressor(phase.regressor, reg, h_s_BxTxD)
            stored = batch.hidden_by_layer
            target_BxTxDt = stored[layer_t] if teacher is None else teacher.hidden[layer_t]
            layer_terms[layer_t] = mean(
                "hidden_mse",
                losses.normalized_mse(pred_BxTxDt, target_BxTxDt, reduction=phase.hidden_reduction),
            )
        if phase.per_layer_regressors:  # The mean of the layers' terms (methods: why).
            hidden_term = sum(layer_terms.values()) / len(layer_terms)
            metrics.update({f"hidden_mse_l{lt}": v for lt, v in layer_terms.items()})
        else:
            (hidden_term,) = layer_terms.values()
        metrics["hidden_mse"] = hidden_term
        loss = loss + phase.hidden_weight * hidden_term
    if phase.logit_pass:
        targets_BxT = jnp.concatenate([tokens_BxT[:, 1:], tokens_BxT[:, :1]], axis=1)
        token_inputs = {tiled_loss.TARGETS: targets_BxT}
        kd_terms = phase.kd_term
        if phase.live:
            per_tile_fn = live_kd.live_terms_fn(
                model.embedding_table(teacher_params),
                nll=True,
                kd=kd_terms,
                top1=kd_terms,
                opd=bool(phase.opd_weight),
                temperature=config.loss.tau,
                divergence=config.loss.divergence,
                tail=config.loss.tail,
                topk=phase.live_topk,
            )
            if phase.teacher_logits:
                assert teacher is not None and teacher.final_BxTxD is not None
                token_inputs[live_kd.TEACHER_HIDDEN] = teacher.final_BxTxD
        else:
            if kd_terms:
                sampled = loss_options.Signal(phase.signal) is loss_options.Signal.SAMPLED
                token_inputs[tiled_loss.TEACHER] = batch.sampled if sampled else batch.topk
            per_tile_fn = tiled_loss.logit_terms_fn(
                nll=True,
                kd=kd_terms,
                top1=kd_terms,
                temperature=config.loss.tau,
                tail=config.loss.tail,
                divergence=config.loss.divergence,
                signal=phase.signal,
            )
        assert out.final_hidden_BxTxD is not None  # A logit pass runs every block.
        terms = tiled_loss.tiled_logit_losses(
            out.final_hidden_BxTxD,
            model.embedding_table(params),
            per_tile_fn,
            token_inputs,
            tile_tokens=config.loss.token_tile,
        )
        if phase.opd_weight:
            if phase.live:
                opd_BxT = terms["opd"]  # Exact: the full-vocabulary reverse KL.
            else:  # log q(y) − log p(y) at the realized token (score-function gradient).
                opd_BxT = onpolicy.opd_estimate(-terms["nll"], batch.token_logprob)
            opd = mean("opd", opd_BxT)
            metrics["opd"] = opd
            loss = loss + phase.opd_weight * opd
        if phase.data_term or phase.kd_term:
            nll = mean("nll", terms["nll"])
            metrics["nll"] = nll
            objective = off if phase.onpolicy else loss
            if phase.kd_term:
                alpha = alpha_at(config, step, num_steps)
                kd = mean("kd", terms["kd"])
                metrics["kd"] = kd
                metrics["alpha"] = alpha
                metrics["top1_agreement"] = mean("top1_agreement", terms["top1"])
                tau2 = config.loss.tau**2
                objective = objective + (1.0 - alpha) * nll + alpha * tau2 * kd
            else:
                objective = objective + nll
            if phase.onpolicy:
                off = objective
            else:
                loss = objective
    if phase.onpolicy and phase.lam < 1.0:
        loss = phase.lam * loss + (1.0 - phase.lam) * off
    metrics["loss"] = loss
    return loss, metrics
