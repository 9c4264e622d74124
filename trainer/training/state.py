"""TrainState, the optimizer, and which parameters a phase may change.

The state holds the student params AND the regressor (HLD only) so both are
optimised, sharded and checkpointed together; the exported student is
`state.params` alone. HLDF phase 1 trains only the embedding, the first
L_S/2 blocks and the MLP regressor: the update of every other parameter is
masked to exactly zero (after AdamW, so weight decay cannot move them either).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during a phase (a pytree; checkpointed whole).

    Attributes:
        step: int32 scalar, steps taken in the current phase (drives the schedules).
        params: student params (model.init_params tree).
        regressor: regressor params ({} when the phase has none).
        opt_state: optax state over {"params", "regressor"}.

    No PRNG key: no loss term is stochastic (add one with its first user).
    """

    step: jax.Array
    params: Any
    regressor: Any
    opt_state: Any

    @property
    def trainables(self) -> dict:
        """The tree the optimizer sees."""
        return {"params": self.params, "regressor": self.regressor}


def first_half_mask(params, num_blocks: int) -> dict:
    """Update mask (1 train, 0 frozen) for HLDF phase 1 over a model param tree.

    Stacked layer params ([L, ...]) get a [L, 1, ...] mask that is 1 for the
    first `num_blocks` blocks; the embedding (used by the first half) is
    trained; `final_norm` (only used after block L) is frozen.
    """

    def layer_mask(x):
        keep_L = (np.arange(x.shape[0]) < num_blocks).astype(np.float32)
        return jnp.asarray(keep_L.reshape((-1,) + (1,) * (x.ndim - 1)))

    return {
        "embedding": jnp.ones((), jnp.float32),
        "final_norm": jnp.zeros((), jnp.float32),
        "layers": jax.tree.map(layer_mask, params["layers"]),
    }


def mask_updates(mask) -> optax.GradientTransformation:
    """Multiplies updates by a (broadcastable) mask tree; None = no masking."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        if mask is None:
            return updates, state
        masked = {
            "params": jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates["params"], mask),
            "regressor": updates["regressor"],
        }
        return masked, state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    lr_schedule,
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    grad_clip: float = 0.0,
    params_mask=None,
) -> optax.GradientTransformation:
    """AdamW (decoupled decay scaled by the LR) + optional clip + phase mask.

    Args:
        lr_schedule: step -> learning rate.
        b1, b2, eps, weight_decay: AdamW hyper-parameters (paper: 0.9, 0.98, 1e-9, 0.1).
        grad_clip: global-norm clip threshold; 0 disables.
        params_mask: `first_half_mask` output, or None to train every param.
    """
    parts = []
    if grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adamw(lr_schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    parts.append(mask_updates(params_mask))
    return optax.chain(*parts)


def init_state(params, regressor, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh phase state (step 0, fresh optimizer moments)."""
    opt_state = optimizer.init({"params": params, "regressor": regressor})
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, regressor=regressor, opt_state=opt_state
    )


def state_shardings(
    abstract_state: TrainState, optimizer, param_shardings, regressor_shardings, replicated
):
    """Shardings of a TrainState: optimizer moments follow their parameters."""
    trainable_shardings = {"params": param_shardings, "regressor": regressor_shardings}
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_state.opt_state,
        trainable_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    return TrainState(
        step=replicated,
        params=param_shardings,
        regressor=regressor_shardings,
        opt_state=opt_shardings,
    )
