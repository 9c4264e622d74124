"""What each method trains, phase by phase: terms, store fields, schedules (docs/DESIGN.md §1).

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

OPRD on n teacher layers (`onpolicy.hidden_layers`, each matched to a student layer
at the same relative depth by `layer_match.student_layers`, each with its own W_R):
L_emb = (1/n) Σ_l L_emb(l). The mean keeps one layer's scale (a sum would multiply
the term and its gradient by n), so β, λ and the learning rate keep their meaning
as layers are added, and a one-layer list is the one-layer run.

A `Phase` is the static plan of one phase (which terms, which store fields,
which regressor); trainer.training.phase_loss composes its loss on a batch.
"""

from __future__ import annotations

import dataclasses

from store import objective_penalty as penalty_lib
from store import profiles
from trainer.model.regressors import RegressorKind
from trainer.training import live_teacher, loss_options, onpolicy, schedules
from trainer.training.config import ConfigError, Method, oprd_layers, parse_enum
from trainer.training.layer_match import student_layer, student_layers


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
        hidden_layers: the teacher layers the hidden-state term reads (): no hidden term;
            one, teacher.hidden_layer; several for OPRD with onpolicy.hidden_layers).
        student_layers: the student layer matched to each (`layer_match.student_layers`).
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
    hidden_layers: tuple[int, ...] = ()
    student_layers: tuple[int, ...] = ()
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
            fields += tuple(profiles.hidden_name(layer) for layer in self.hidden_layers)
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
    def teacher_layers(self) -> tuple[int, ...]:
        """The live teacher layers a hidden-state term reads (() for none)."""
        return self.hidden_layers if self.live and self.hidden_term else ()

    @property
    def per_layer_regressors(self) -> bool:
        """Several hidden layers: a regressor each, under `layer_match.regressor_key` (one: its own tree)."""
        return len(self.hidden_layers) > 1


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
                hidden_layers=(config.teacher.hidden_layer,),
                student_layers=(student_layer(config, num_layers),),
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
        hidden_layers=(config.teacher.hidden_layer,),
        student_layers=(half,),
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
    teacher_layers = oprd_layers(config)
    matched = student_layers(config, num_layers, teacher_layers)
    return dataclasses.replace(
        base,
        flops_method="oprd_opd" if logits else "oprd",
        num_blocks=None if logits else max(matched),
        hidden_term=True,
        hidden_weight=1.0,
        regressor=RegressorKind.LINEAR,
        hidden_layers=teacher_layers,
        student_layers=matched,
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
