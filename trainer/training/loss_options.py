"""The vocabulary of loss settings: the names ``config.loss.*`` accepts, importable without JAX.

Every enum a loss setting is parsed into, its ``parse_*`` helper (a
ConfigError listing the allowed names) and the settings checks that need no
arrays live here, so that the config system (trainer.training.config), the
sweep, the report and every CLI's ``--help`` validate a config without
importing JAX. The loss functions (trainer.training.losses, sampled_kd,
tiled_loss) take the same members.

    setting                 enum             values
    loss.tail               TailMode         zero | renormalize | bucket
    loss.divergence         Divergence       forward_kl | reverse_kl | jsd
    loss.hidden_reduction   HiddenReduction  mean | sum
    loss.signal             Signal           topk | sampled
    loss.alpha_schedule     AlphaSchedule    constant | linear | wsd
"""

from __future__ import annotations

import enum

from trainer.model.errors import ConfigError
from trainer.model.model_config import parse_enum


class TailMode(enum.Enum):
    """How the teacher mass outside the stored top-k support is treated."""

    # Teacher: softmax(logprob/τ) over the support. Student: full-vocabulary
    # log_softmax(logits/τ) gathered at the ids (its tail is simply dropped).
    ZERO = "zero"
    # As ZERO, but the student is renormalised over the support too.
    RENORMALIZE = "renormalize"
    # Both sides get one extra class holding the (tempered) mass outside the
    # support (teacher: 1 − Σ exp(logprob) at τ=1, the documented estimate of
    # the tempered tail otherwise, trainer.training.losses; student: its exact
    # mass off the ids).
    BUCKET = "bucket"


class Divergence(enum.Enum):
    """Divergence between teacher p and student q over the support classes."""

    FORWARD_KL = "forward_kl"  # KL(p ‖ q): mode-covering, the classic KD loss.
    REVERSE_KL = "reverse_kl"  # KL(q ‖ p): mode-seeking.
    JSD = "jsd"  # ½KL(p‖m) + ½KL(q‖m), m = ½(p + q); bounded by log 2.


class HiddenReduction(enum.Enum):
    """How ``losses.normalized_mse`` reduces the feature axis D, i.e. what γ weighs.

    The two differ by the factor D (the teacher width), so γ under MEAN
    weighs D times less than under SUM: at d_T=128 (the demo) the paper's
    γ=0.1 with MEAN is γ=0.1/128 ≈ 8e-4 of the squared distance.
    """

    # The paper's definition ("MeanSquaredError" of the two unit vectors): mean over D,
    # in [0, 4/D]. The paper's configs (γ ∈ {0.1, 0.05} at d_T=2560) use it.
    MEAN = "mean"
    # The squared Euclidean distance of the unit vectors, ‖u − v‖² = 2 − 2·cos(u, v),
    # in [0, 4] at any width: γ then means the same whatever d_T is.
    SUM = "sum"


class Signal(enum.Enum):
    """Which stored teacher signal the KD term reads; a member's value is its store field."""

    TOPK = "topk"  # topk/* arrays: losses.kd_topk (tail modes, any τ, any divergence).
    SAMPLED = "sampled"  # sampled/* arrays: sampled_kd.kd_sampled (unbiased forward KL at τ = 1).


class AlphaSchedule(enum.Enum):
    """How the KD weight α moves over the run (trainer.training.schedules.alpha_schedule)."""

    CONSTANT = "constant"  # α throughout.
    LINEAR = "linear"  # alpha_start → α linearly over the run.
    WSD = "wsd"  # alpha_start → α over warm-up, α, → alpha_final over the decay.


def parse_tail_mode(value: object) -> TailMode:
    """Returns the ``TailMode`` for a name or member; ConfigError if unknown."""
    return parse_enum(TailMode, value, "KD tail mode", ConfigError)


def parse_divergence(value: object) -> Divergence:
    """Returns the ``Divergence`` for a name or member; ConfigError if unknown."""
    return parse_enum(Divergence, value, "KD divergence", ConfigError)


def parse_hidden_reduction(value: object) -> HiddenReduction:
    """Returns the ``HiddenReduction`` for a name or member; ConfigError if unknown."""
    return parse_enum(HiddenReduction, value, "hidden-loss reduction", ConfigError)


def parse_signal(value: object) -> Signal:
    """Returns the ``Signal`` for a name or member; ConfigError if unknown."""
    return parse_enum(Signal, value, "KD signal", ConfigError)


def parse_alpha_schedule(value: object) -> AlphaSchedule:
    """Returns the ``AlphaSchedule`` for a name or member; ConfigError if unknown."""
    return parse_enum(AlphaSchedule, value, "loss.alpha_schedule", ConfigError)


def check_temperature(temperature: float | str, tail: str | TailMode) -> float:
    """Validates a KD temperature for a tail mode and returns it as a float.

    Every tail mode works at every τ (bucket at τ ≠ 1 estimates the
    teacher's tempered tail mass, see trainer.training.losses).

    Raises:
      ConfigError: an unknown tail mode, or a temperature that is not a
        finite positive number.
    """
    parse_tail_mode(tail)
    try:
        tau = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(
            f"KD temperature must be a number, got {temperature!r}; pass e.g. 1.0"
        ) from None
    if not (tau > 0.0 and tau < float("inf")):
        raise ConfigError(f"KD temperature must be finite and > 0, got {tau}; pass e.g. 0.5 or 1.0")
    return tau


def check_sampled_settings(temperature: float, divergence: str | Divergence) -> None:
    """Refuses the KD settings that the sampled estimator (sampled_kd.kd_sampled) cannot honour.

    The draws come from the teacher at τ = 1, and the estimator is unbiased
    only there and only for the forward KL (trainer.training.sampled_kd).

    Raises:
      ConfigError: τ ≠ 1 or a divergence other than forward_kl, naming the fix.
    """
    if float(temperature) != 1.0:
        raise ConfigError(
            f"loss.tau={float(temperature):g} with loss.signal=sampled: the stored draws are "
            "from the teacher at tau=1 and the estimator is unbiased only there; use "
            "--set loss.tau=1.0 or --set loss.signal=topk"
        )
    div = parse_divergence(divergence)
    if div is not Divergence.FORWARD_KL:
        raise ConfigError(
            f"loss.divergence={div.value} with "
            "loss.signal=sampled: draws from the teacher estimate only the forward KL "
            "(the others need the teacher's probability where the student puts mass); use "
            "--set loss.divergence=forward_kl or --set loss.signal=topk"
        )
