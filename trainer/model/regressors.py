"""Regressors mapping the student's hidden state into the teacher's width.

They live in the train state next to the student but are never exported
with it (docs/DESIGN.md §1). Plain functions over plain param dicts, like
``trainer.model``, so they shard with the same logical-axis rules.

- ``linear`` (HLDC, ``W_R``): ``h_S @ W``, ``W: [d_S, d_T]``, no bias. The
  paper's ``W_R h_S`` is a matrix; a bias would add a constant offset that
  the per-token normalisation in ``L_emb`` cannot remove, for no benefit.
- ``mlp`` (HLDF phase 1): ``gelu(h_S @ W1 + b1) @ W2 + b2`` with hidden width
  ``4·d_S``. Biases here: a one-hidden-layer MLP without a hidden bias cannot
  place the gelu's kink, so it would be a strictly weaker regressor. gelu is
  the tanh approximation, as in Gemma's own GeGLU.

``d_T < d_S`` works as well (nothing assumes a bigger teacher).

Stable signatures (the trainer codes against these)::

    init_linear(rng, d_student, d_teacher) -> {"w": [d_S, d_T]}
    init_mlp(rng, d_student, d_teacher) -> {"w1", "b1", "w2", "b2"}
    apply_linear(params, hidden_BxTxDs) -> [B, T, d_T]
    apply_mlp(params, hidden_BxTxDs) -> [B, T, d_T]
    init_regressor(kind, rng, d_student, d_teacher); apply_regressor(kind, params, h)
    logical_axes(params) -> same tree of logical axis-name tuples
    regressor_param_count(kind, d_student, d_teacher) -> int   # from eval_shape of init

Computation runs in the dtype of the hidden state (bf16 in mixed precision,
like the model); params are fp32.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.model.errors import ConfigError
from trainer.model.model_config import parse_enum

Params = dict[str, Any]

# Logical axis names (see trainer.training.sharding.LOGICAL_RULES).
_AXES = {
    "w": ("embed", "teacher_embed"),
    "w1": ("embed", "reg_hidden"),
    "b1": ("reg_hidden",),
    "w2": ("reg_hidden", "teacher_embed"),
    "b2": ("teacher_embed",),
}

MLP_EXPANSION = 4  # Hidden width of the HLDF regressor, in units of d_S.


class RegressorKind(enum.Enum):
    LINEAR = "linear"  # HLDC: W_R, d_S → d_T.
    MLP = "mlp"  # HLDF phase 1: d_S → 4·d_S → d_T.


def parse_kind(kind) -> RegressorKind:
    """``RegressorKind`` for a name or member; ConfigError if unknown."""
    return parse_enum(RegressorKind, kind, "regressor kind", ConfigError)


def _check_widths(d_student, d_teacher):
    for name, d in (("d_student", d_student), ("d_teacher", d_teacher)):
        if isinstance(d, bool) or not hasattr(d, "__index__") or int(d) < 1:
            raise ConfigError(f"{name}={d!r} must be a positive int (a model's d_model)")


def _fan_in_normal(rng, shape):
    # std 1/sqrt(fan_in), as the model's projections: outputs start O(|h|).
    return jax.random.normal(rng, shape, jnp.float32) / np.sqrt(shape[0])


def init_linear(rng: jax.Array, d_student: int, d_teacher: int) -> Params:
    """Params of the HLDC linear regressor ``{"w": [d_S, d_T]}`` (fp32)."""
    _check_widths(d_student, d_teacher)
    return {"w": _fan_in_normal(rng, (int(d_student), int(d_teacher)))}


def init_mlp(rng: jax.Array, d_student: int, d_teacher: int) -> Params:
    """Params of the HLDF MLP regressor d_S → 4·d_S → d_T (fp32, zero biases)."""
    _check_widths(d_student, d_teacher)
    d_s, d_t = int(d_student), int(d_teacher)
    d_h = MLP_EXPANSION * d_s
    rng1, rng2 = jax.random.split(rng)
    return {
        "w1": _fan_in_normal(rng1, (d_s, d_h)),
        "b1": jnp.zeros((d_h,), jnp.float32),
        "w2": _fan_in_normal(rng2, (d_h, d_t)),
        "b2": jnp.zeros((d_t,), jnp.float32),
    }


def _check_input(hidden, d_in):
    if hidden.shape[-1] != d_in:
        raise ConfigError(
            f"regressor expects the student width {d_in} on the last axis, got hidden of shape "
            f"{hidden.shape}; capture the student layer (not the teacher's) as the input"
        )


def apply_linear(params: Params, hidden_BxTxDs: jax.Array) -> jax.Array:
    """``hidden @ W`` in the hidden's dtype -> ``[..., d_T]``."""
    w = params["w"]
    _check_input(hidden_BxTxDs, w.shape[0])
    return jnp.einsum("...s,st->...t", hidden_BxTxDs, w.astype(hidden_BxTxDs.dtype))


def apply_mlp(params: Params, hidden_BxTxDs: jax.Array) -> jax.Array:
    """``gelu(hidden @ W1 + b1) @ W2 + b2`` in the hidden's dtype -> ``[..., d_T]``."""
    dtype = hidden_BxTxDs.dtype
    _check_input(hidden_BxTxDs, params["w1"].shape[0])
    h_BxTxDh = jnp.einsum("...s,sh->...h", hidden_BxTxDs, params["w1"].astype(dtype))
    h_BxTxDh = jax.nn.gelu(h_BxTxDh + params["b1"].astype(dtype), approximate=True)
    out = jnp.einsum("...h,ht->...t", h_BxTxDh, params["w2"].astype(dtype))
    return out + params["b2"].astype(dtype)


_REGISTRY: dict[RegressorKind, tuple[Callable[..., Params], Callable[..., jax.Array]]] = {
    RegressorKind.LINEAR: (init_linear, apply_linear),
    RegressorKind.MLP: (init_mlp, apply_mlp),
}


def init_regressor(kind, rng: jax.Array, d_student: int, d_teacher: int) -> Params:
    """Params for a regressor kind ("linear" | "mlp")."""
    return _REGISTRY[parse_kind(kind)][0](rng, d_student, d_teacher)


def apply_regressor(kind, params: Params, hidden_BxTxDs: jax.Array) -> jax.Array:
    """Applies a regressor kind ("linear" | "mlp") to the student hidden state."""
    return _REGISTRY[parse_kind(kind)][1](params, hidden_BxTxDs)


def logical_axes(params: Params) -> dict[str, tuple[str, ...]]:
    """The same tree with a tuple of logical axis names per leaf (for sharding)."""
    unknown = sorted(set(params) - set(_AXES))
    if unknown:
        raise ConfigError(
            f"unknown regressor param names {unknown}; expected a tree from init_linear or init_mlp"
        )
    return {name: _AXES[name] for name in params}


def regressor_param_count(kind, d_student: int, d_teacher: int) -> int:
    """Number of regressor parameters, counted from ``jax.eval_shape`` of the init.

    Counting the real init (not a formula) keeps N_reg in the FLOPs
    accounting in step with whatever the regressor actually is.
    """
    init_fn = _REGISTRY[parse_kind(kind)][0]
    _check_widths(d_student, d_teacher)
    shapes = jax.eval_shape(lambda: init_fn(jax.random.key(0), d_student, d_teacher))
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))
