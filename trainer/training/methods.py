"""The ONE place where loss terms are composed per method and phase (docs/DESIGN.md §1).

    NLL          L = L_data
    KD           L = (1-α) L_data + α τ² KL(p_T^τ ‖ p_S^τ)          (stored top-k or sampled)
    HLDC         L = (1-α) L_data + α τ² KL + γ L_emb             (linear W_R: d_S→d_T)
    HLDF phase 1 L = L_HT   (first L_S/2 blocks + MLP d_S→4d_S→d_T, normalized MSE)
    HLDF phase 2 L = L_KD   (whole student from the phase-1 weights)

α follows `loss.alpha_schedule` within a phase. With α = 0 (constant) the
logit-distillation term is not computed at all and the top-k is not read,
which is representation-only distillation for HLDC (α=0, γ>0).

The KL's teacher signal is `loss.signal` (trainer.training.loss_options.Signal):
the stored top-k (`losses.kd_topk`), or the stored sampled logits
(`sampled_kd.kd_sampled`, an unbiased estimate of the full-vocabulary forward
KL at τ = 1), in KD, HLDC and HLDF phase 2 alike. FLOPs accounting is the same
for both: the logit pass is one unembed either way.

Position convention: the store's top-k at position i predicts token i+1, as
does the student's logit at i. L_data uses positions 0..T-2 (the target of
the last position is not in the row); KL and top-1 use all T positions;
hidden-state terms use all T positions.

A live teacher (`teacher.checkpoint`, trainer.training.live_teacher) replaces
the stored signal in every term: KD over its full vocabulary at any τ and
divergence, or its own top-K (`teacher.live_topk`), and its hidden state at
`teacher.hidden_layer`; the store then only supplies tokens (and loss_mask).

On-policy methods, on rollouts (trainer.training.onpolicy: masks, estimator,
and how λ mixes):

    OPD          L = λ·OPD + (1-λ)·L_off
    OPRD         L = λ·(L_emb + β·OPD) + (1-λ)·L_off      (linear W_R; β = onpolicy.opd_weight)
    L_off        (1-α) L_data + α τ² KL on the rows' prompt tokens (λ = onpolicy.lam < 1)

OPRD without a logit term (β = 0, λ = 1) runs the student's first l_S
blocks only, as HLDF phase 1 (the [B,T,V] logits are never built, and the
blocks after l_S, which it gives no gradient, are not decayed either).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from store import objective_penalty as penalty_lib
from store import profiles
from trainer.model import gemma3 as model
from trainer.model import regressors
from trainer.model.regressors import RegressorKind
from trainer.training import (
    decode,
    live_kd,
    live_teacher,
    loss_options,
    losses,
    onpolicy,
    schedules,
    tiled_loss,
)
from trainer.training.config import ConfigError, Method, parse_enum


@dataclasses.dataclass(frozen=True, kw_only=True)
class Phase:
    """A static description of one training phase (hashable: it is a jit static).

    Attributes:
        index: 1 or 2 (only HLDF has a phase 2).
        flops_method: the per-token cost key in trainer.flops ("nll", "kd", "hldc", "ht").
        num_blocks: student blocks run (None: all; L_S//2 in HLDF phase 1).
        data_term: include (1-α) L_data.
        kd_term: include α τ² KL (needs top-k).
        hidden_term: include the normalized-MSE term (needs hidden).
        hidden_weight: 1 for L_HT (HLDF phase 1), γ for HLDC.
        regressor: which regressor the phase trains (None: no regressor).
        constant_lr: constant LR after warm-up (HLDF phase 1) instead of WSD.
        signal: the KD term's stored teacher signal ("topk" | "sampled": its store field).
        hidden_layer: the teacher layer the hidden-state term reads (0: no hidden term).
        hidden_reduction: how the hidden term reduces the teacher width D
            (loss_options.HiddenReduction: "mean", the paper's, or "sum").
        live: the teacher terms read the live teacher (teacher.checkpoint), not the store.
        live_topk: live KD over the teacher's top-K (0: its full vocabulary).
        onpolicy: the phase trains on rollouts: its terms weigh completion / prompt
            tokens by the batch's loss_mask (trainer.training.onpolicy).
        opd_weight: weight of the OPD term (0: none).
        lam: GKD's λ, the on-policy terms' share of the loss (on-policy phases; 1: no
            off-policy term).
    """

    index: int = 1
    flops_method: str
    num_blocks: int | None = None
    data_term: bool = False
    kd_term: bool = False
    hidden_term: bool = False
    hidden_weight: float = 0.0
    regressor: RegressorKind | None = None
    constant_lr: bool = False
    signal: str = loss_options.Signal.TOPK.value
    hidden_layer: int = 0
    hidden_reduction: str = loss_options.HiddenReduction.MEAN.value
    live: bool = False
    live_topk: int = 0
    onpolicy: bool = False
    opd_weight: float = 0.0
    lam: float = 1.0

    @property
    def fields(self) -> tuple[str, ...]:
        """Store fields this phase reads (the loader reads nothing else): "tokens", "topk" or
        "sampled", "hidden/<l>" (none of them with a live teacher), "loss_mask" (on-policy),
        "token_logprob" (OPD without a live teacher); `decode.BatchSpec` turns them into
        stored arrays."""
        fields: tuple[str, ...] = (profiles.TOKENS,)
        if self.kd_term and not self.live:
            fields += (
                loss_options.Signal(self.signal).value,
            )  # a Signal's value is its store field
        if self.hidden_term and not self.live:
            fields += (profiles.hidden_name(self.hidden_layer),)
        if self.onpolicy:
            fields += (onpolicy.LOSS_MASK,)
        if self.opd_weight and not self.live:
            fields += (onpolicy.TOKEN_LOGPROB,)
        return fields

    @property
    def logit_pass(self) -> bool:
        """Whether the student's logits are built (tile by tile) at all."""
        return self.data_term or self.kd_term or bool(self.opd_weight)

    @property
    def teacher_logits(self) -> bool:
        """Whether a logit term reads the live teacher's logits."""
        return self.live and (self.kd_term or bool(self.opd_weight))

    @property
    def teacher_layer(self) -> int:
        """The live teacher layer a hidden-state term reads (0: none)."""
        return self.hidden_layer if self.live and self.hidden_term else 0


def student_layer(config, num_layers: int) -> int:
    """The student layer l_S compared with the teacher (config value, default L_S//2)."""
    return config.student_layer or num_layers // 2


def phases(config, num_layers: int) -> tuple[Phase, ...]:
    """The phases of `config.method` (one, or two for HLDF)."""
    method = parse_enum(Method, config.method, "method")
    logit_kd = not (
        config.loss.alpha == 0.0
        and loss_options.parse_alpha_schedule(config.loss.alpha_schedule)
        is loss_options.AlphaSchedule.CONSTANT
    )
    signal = loss_options.parse_signal(config.loss.signal).value
    reduction = loss_options.parse_hidden_reduction(config.loss.hidden_reduction).value
    live = live_teacher.enabled(config)
    kd_phase = Phase(
        flops_method="kd",
        data_term=True,
        kd_term=logit_kd,
        signal=signal,
        live=live,
        live_topk=int(config.teacher.live_topk),
    )
    if method is Method.NLL:
        return (Phase(flops_method="nll", data_term=True),)
    if method is Method.KD:
        return (kd_phase,)
    if method in (Method.OPD, Method.OPRD):
        return (onpolicy_phase(config, method, kd_phase, num_layers, reduction),)
    if method is Method.HLDC:
        return (
            dataclasses.replace(
                kd_phase,
                flops_method="hldc",
                hidden_term=True,
                hidden_weight=float(config.loss.gamma),
                regressor=RegressorKind.LINEAR,
                hidden_layer=config.teacher.hidden_layer,
                hidden_reduction=reduction,
            ),
        )
    half = student_layer(config, num_layers)
    phase1 = Phase(
        live=live,
        flops_method="ht",
        num_blocks=half,
        hidden_term=True,
        hidden_weight=1.0,
        regressor=RegressorKind.MLP,
        constant_lr=True,
        hidden_layer=config.teacher.hidden_layer,
        hidden_reduction=reduction,
    )
    return (phase1, dataclasses.replace(kd_phase, index=2))


def onpolicy_phase(config, method: Method, kd_phase: Phase, num_layers: int, reduction: str):
    """The one phase of OPD / OPRD: on-policy terms + (λ < 1) the off-policy KD objective."""
    lam = float(config.onpolicy.lam)
    off = lam < 1.0
    opd_weight = 1.0 if method is Method.OPD else float(config.onpolicy.opd_weight)
    base = dataclasses.replace(
        kd_phase,
        onpolicy=True,
        lam=lam,
        opd_weight=opd_weight,
        data_term=off,
        kd_term=off and kd_phase.kd_term,
    )
    if method is Method.OPD:
        return dataclasses.replace(base, flops_method="opd")
    logits = bool(opd_weight) or off
    return dataclasses.replace(
        base,
        flops_method="oprd_opd" if logits else "oprd",
        num_blocks=None if logits else student_layer(config, num_layers),
        hidden_term=True,
        hidden_weight=1.0,
        regressor=RegressorKind.LINEAR,
        hidden_layer=config.teacher.hidden_layer,
        hidden_reduction=reduction,
    )


def alpha_fn(config, num_steps: int):
    """The α schedule of a phase of `num_steps` steps (ConfigError if inconsistent)."""
    loss = config.loss
    return schedules.alpha_schedule(
        loss.alpha_schedule,
        loss.alpha,
        num_steps,
        config.optim.warmup_steps,
        config.optim.decay_fraction,
        alpha_start=loss.alpha_start,
        alpha_final=loss.alpha_final,
    )


def alpha_at(config, step, num_steps: int):
    """α at `step` of a phase of `num_steps` steps (jit-able)."""
    return alpha_fn(config, num_steps)(step)


def lr_schedule(config, phase: Phase, num_steps: int):
    """The phase's LR schedule: WSD, or constant after warm-up for HLDF phase 1."""
    if phase.constant_lr:
        return schedules.constant_after_warmup(config.optim.lr, config.hldf.warmup_steps, num_steps)
    return schedules.wsd(
        config.optim.lr,
        num_steps,
        config.optim.warmup_steps,
        config.optim.decay_fraction,
        config.optim.final_lr_fraction,
    )


def check_schedules(config, phase_steps) -> None:
    """Builds every phase's LR and α schedule before anything trains.

    Args:
        config: the trainer config.
        phase_steps: (Phase, num_steps) pairs, e.g. from the trainer's plan.

    Raises:
        ConfigError: naming the phase, the schedule and the fix (an HLDF
            phase-2 schedule that does not fit must not cost a phase 1).
    """
    for phase, num_steps in phase_steps:
        try:
            lr_schedule(config, phase, num_steps)
            if phase.kd_term:
                alpha_fn(config, num_steps)
        except ConfigError as e:
            knob = "hldf.warmup_steps" if phase.constant_lr else "optim.warmup_steps"
            raise ConfigError(
                f"phase {phase.index} of {config.method} ({num_steps} steps): "
                f"{e} ({knob}, optim.decay_fraction, budget.value)"
            ) from None


def objective_penalty(config, reader, phases, sample_rows: int = 16) -> dict | None:
    """The penalty of this run's KD objective optimum on a store sample (None: no KD term).

    See store.objective_penalty (numpy; shared with `python -m store stats`).
    Uses the schedule's peak α (config.loss.alpha), where the term weighs most.
    """
    if not any(p.kd_term for p in phases):
        return None
    loss = config.loss
    if live_teacher.enabled(config):
        # Full vocabulary: the optimum is the teacher, exactly 0. A top-K restriction
        # of the live teacher has no stored rows to estimate its penalty from.
        return None if config.teacher.live_topk else live_penalty(config)
    if loss_options.parse_signal(loss.signal) is loss_options.Signal.SAMPLED:
        return sampled_penalty(config)
    topk_NxK = penalty_lib.sample_topk_logprobs(reader, sample_rows=sample_rows, seed=config.seed)
    return penalty_lib.summarize(
        topk_NxK, reader.schema.vocab_size, loss.alpha, loss.tau, loss.tail, loss.divergence
    )


def sampled_penalty(config) -> dict:
    """The penalty summary of the sampled signal: exactly 0, nothing to sample.

    The sampled KD term is an unbiased estimate of the full-vocabulary
    KL(p ‖ q) (τ = 1, forward KL: the only settings it accepts), so the
    expected objective (1-α)·NLL + α·KL is minimised by q = p, the teacher:
    no tail is dropped and the optimum costs nothing. The draws add variance,
    not bias. Same keys as ``store.objective_penalty.summarize``.
    """
    loss = config.loss
    return {
        "alpha": float(loss.alpha),
        "tau": float(loss.tau),
        "tail": "n/a (sampled signal: unbiased, exactly 0)",
        "divergence": loss.divergence,
        "threshold_nats": penalty_lib.THRESHOLD_NATS,
        "positions": 0,
        "penalty_nats": 0.0,
        "penalty_max_nats": 0.0,
        "solver_residual": 0.0,
        "warn": False,
        "signal": loss_options.Signal.SAMPLED.value,
    }


def live_penalty(config) -> dict:
    """The penalty summary of a live full-vocabulary teacher: exactly 0 (nothing is dropped).

    Same keys as ``store.objective_penalty.summarize``.
    """
    return {
        **sampled_penalty(config),
        "tail": "n/a (live teacher: its full vocabulary, exactly 0)",
        "signal": "live",
    }


def init_regressor(kind: RegressorKind | None, rng, d_student: int, d_teacher: int):
    """Fresh regressor params ({} for none)."""
    if kind is None:
        return {}
    return regressors.init_regressor(kind, rng, d_student, d_teacher)


def regressor_logical_axes(kind: RegressorKind | None, regressor_params):
    """Logical axes of a regressor tree (for trainer.training.sharding)."""
    if kind is None:
        return {}
    return regressors.logical_axes(regressor_params)


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
    loss_mask_BxT = batch[onpolicy.LOSS_MASK] if phase.onpolicy else None
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
            hidden_layer=phase.teacher_layer,
            logits=phase.teacher_logits,
        )
    layer_s = student_layer(config, model_cfg.num_layers)
    capture = (layer_s,) if phase.hidden_term else ()
    out = model.forward(
        params, tokens_BxT, model_cfg, capture_layers=capture, num_blocks=phase.num_blocks
    )
    metrics = {}
    # `loss` holds the on-policy terms of an on-policy phase (λ-weighted at the end), and
    # every term of the others; `off` the off-policy terms of an on-policy phase.
    loss = jnp.zeros((), jnp.float32)
    off = jnp.zeros((), jnp.float32)
    if phase.hidden_term:
        h_s_BxTxD = out.captured[layer_s]
        pred_BxTxDt = regressors.apply_regressor(phase.regressor, regressor, h_s_BxTxD)
        target_BxTxDt = batch.hidden if teacher is None else teacher.hidden_BxTxD
        assert target_BxTxDt is not None  # The phase's fields hold it, or the live teacher.
        hidden_term = mean(
            "hidden_mse",
            losses.normalized_mse(pred_BxTxDt, target_BxTxDt, reduction=phase.hidden_reduction),
        )
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
