"""Learning-rate and loss-weight (α) schedules: step -> value, optax-compatible.

Every builder validates its arguments eagerly (a ConfigError naming the
value and the fix) and returns a pure ``schedule(step) -> fp32 scalar`` that
works on Python ints and traced int arrays alike, so it can be handed to
``optax.adamw(learning_rate=...)`` or evaluated inside a jitted step.

Stable signatures (the trainer codes against these)::

    wsd(peak, total_steps, warmup_steps, decay_fraction=0.1, final_fraction=0.01)
    constant_after_warmup(peak, warmup_steps, total_steps=None)
    alpha_schedule(name, alpha, total_steps, warmup_steps=0, decay_fraction=0.1,
                   alpha_start=0.0, alpha_final=0.0)      # name: "constant" | "linear" | "wsd"

Conventions (decided here, documented once):
- Warm-up is linear from 0 at step 0 (optax's convention) to the peak at
  ``warmup_steps``.
- WSD decays *linearly* over the last ``round(decay_fraction · total)`` steps,
  from the peak at the start of the decay to ``peak · final_fraction`` at
  ``total_steps`` (and stays there after). Linear, not cosine: it is the
  common WSD choice and the paper only says "decays to η/100".
- Inconsistent lengths are an error, not clamped: ``warmup_steps`` plus the
  decay steps must fit in ``total_steps``. Silently shortening a warm-up
  would change the experiment; the message says which knob to turn.
- Steps past ``total_steps`` hold the final value; negative steps give the
  step-0 value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

from trainer.model.errors import ConfigError
from trainer.model.model_config import parse_enum
from trainer.training import loss_options

Schedule = Callable[[object], jnp.ndarray]


def _check_int(value, name, minimum):
    is_integer = hasattr(value, "__index__") and not isinstance(value, bool)
    if not is_integer:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _check_fraction(value, name, low_open=False):
    v = float(value)
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok or math.isnan(v):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name}={value} must be in {interval}")
    return v


def _check_finite_nonneg(value, name):
    v = float(value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ConfigError(f"{name}={value} must be a finite number >= 0")
    return v


def _ramp(step, start, length):
    """0 before `start`, linear to 1 over `length` steps, 1 after (length 0: a step)."""
    step = jnp.asarray(step, jnp.float32)
    if length == 0:
        return (step >= start).astype(jnp.float32)
    return jnp.clip((step - start) / float(length), 0.0, 1.0)


def _decay_steps(total_steps, warmup_steps, decay_fraction, what):
    decay = int(round(decay_fraction * total_steps))
    if warmup_steps + decay > total_steps:
        raise ConfigError(
            f"{what}: warmup_steps={warmup_steps} + decay steps={decay} "
            f"({decay_fraction:g} of {total_steps}) exceed total_steps={total_steps}; "
            "lower warmup_steps or raise the budget"
        )
    return decay


def _warmup_stable_decay(start, peak, end, total_steps, warmup_steps, decay_steps) -> Schedule:
    decay_start = total_steps - decay_steps

    def schedule(step):
        up = _ramp(step, 0, warmup_steps)
        # No decay phase means no decay at all, not a drop at total_steps.
        down = _ramp(step, decay_start, decay_steps) if decay_steps else 0.0
        return (start + (peak - start) * up) * (1.0 - down) + end * down

    return schedule


def wsd(
    peak: float,
    total_steps: int,
    warmup_steps: int,
    decay_fraction: float = 0.1,
    final_fraction: float = 0.01,
) -> Schedule:
    """Warm-up / stable / decay learning rate (docs/DESIGN.md §1: last 10% to η/100).

    Args:
      peak: η, the stable learning rate (≥ 0).
      total_steps: steps in the run (≥ 1).
      warmup_steps: linear warm-up from 0 (≥ 0).
      decay_fraction: fraction of total_steps spent decaying, in [0, 1].
      final_fraction: the LR at the end is peak · final_fraction, in (0, 1].

    Returns:
      ``schedule(step) -> lr``.

    Raises:
      ConfigError: out-of-range values, or warm-up + decay > total_steps.
    """
    peak = _check_finite_nonneg(peak, "peak learning rate")
    total_steps = _check_int(total_steps, "total_steps", 1)
    warmup_steps = _check_int(warmup_steps, "warmup_steps", 0)
    decay_fraction = _check_fraction(decay_fraction, "decay_fraction")
    final_fraction = _check_fraction(final_fraction, "final_fraction", low_open=True)
    decay = _decay_steps(total_steps, warmup_steps, decay_fraction, "WSD schedule")
    return _warmup_stable_decay(0.0, peak, peak * final_fraction, total_steps, warmup_steps, decay)


def constant_after_warmup(
    peak: float, warmup_steps: int, total_steps: int | None = None
) -> Schedule:
    """Linear warm-up from 0 to ``peak``, then constant (HLDF phase 1).

    Given ``total_steps`` (the phase's length), a warm-up longer than the
    phase is refused, as ``wsd`` refuses one that does not fit: it would
    silently cap the learning rate below ``peak`` for the whole phase.
    """
    peak = _check_finite_nonneg(peak, "peak learning rate")
    warmup_steps = _check_int(warmup_steps, "warmup_steps", 0)
    if total_steps is not None:
        total_steps = _check_int(total_steps, "total_steps", 1)
        if warmup_steps > total_steps:
            raise ConfigError(
                f"constant-LR schedule: warmup_steps={warmup_steps} exceeds total_steps="
                f"{total_steps}, so the LR would never reach its peak; lower warmup_steps "
                "or raise the budget"
            )

    def schedule(step):
        return peak * _ramp(step, 0, warmup_steps)

    return schedule


def alpha_schedule(
    name: str | loss_options.AlphaSchedule,
    alpha: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay_fraction: float = 0.1,
    alpha_start: float = 0.0,
    alpha_final: float = 0.0,
) -> Schedule:
    """Weight α of the logit-distillation term over a phase.

    - "constant": α at every step.
    - "linear": ``alpha_start`` at step 0 → α at ``total_steps`` (linear).
    - "wsd": ``alpha_start`` → α over ``warmup_steps``, α, then → ``alpha_final``
      over the last ``decay_fraction`` of the steps (same shape as the LR's).

    All values must lie in [0, 1] (α mixes (1 − α)·NLL with α·KD).

    Raises:
      ConfigError: unknown name, a value outside [0, 1], or (wsd)
        warm-up + decay > total_steps.
    """
    kind = parse_enum(loss_options.AlphaSchedule, name, "alpha schedule", ConfigError)
    alpha = _check_fraction(alpha, "alpha")
    alpha_start = _check_fraction(alpha_start, "alpha_start")
    alpha_final = _check_fraction(alpha_final, "alpha_final")
    total_steps = _check_int(total_steps, "total_steps", 1)
    if kind is loss_options.AlphaSchedule.CONSTANT:
        return lambda step: jnp.asarray(alpha, jnp.float32)
    if kind is loss_options.AlphaSchedule.LINEAR:
        return lambda step: alpha_start + (alpha - alpha_start) * _ramp(step, 0, total_steps)
    warmup_steps = _check_int(warmup_steps, "warmup_steps", 0)
    decay_fraction = _check_fraction(decay_fraction, "decay_fraction")
    decay = _decay_steps(total_steps, warmup_steps, decay_fraction, "WSD alpha schedule")
    return _warmup_stable_decay(alpha_start, alpha, alpha_final, total_steps, warmup_steps, decay)
