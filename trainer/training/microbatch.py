"""Gradient accumulation: one step's global batch as a scan over micro-batches.

`data.batch_size` stays the global batch (the one the budget, the schedules,
the FLOPs accounting and the data iterator count in). With
`data.micro_batches = M`, the jitted step splits it into M equal micro-batches
and runs forward + backward on one at a time (`lax.scan`), adding losses,
metrics and gradients; activation memory is that of one micro-batch.

Exactness: a loss term is a per-token mean, Σ values / N over the tokens its
mask keeps. The mean of micro-batch means is only the full-batch mean when
every micro-batch keeps as many tokens, so each micro-batch instead divides
its SUM by the global count N, taken from the whole batch's masks before the
scan (`counts_fn`); the M results then add up to the full-batch value exactly
(up to float summation order), and so do their gradients, because the loss
is linear in the per-term sums.

    (loss, metrics), grads = value_and_grad(loss_fn, trainables, batch, M,
                                            counts_fn=..., mesh=mesh)

Rows are split strided (micro-batch m holds rows m, m+M, m+2M, ...), so each
device keeps its own rows: with the batch split contiguously over the devices,
every micro-batch takes the same share of every device's rows and nothing
moves between devices. That is why M must divide the per-device batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trainer.model.errors import ConfigError
from trainer.training import sharding


def check_micro_batches(micro_batches: int, batch_size: int, batch_divisor: int) -> None:
    """Refuses a micro-batch count that does not divide the per-device batch.

    Args:
        micro_batches: `data.micro_batches`.
        batch_size: `data.batch_size`, the global batch.
        batch_divisor: devices the batch is split over (`sharding.batch_divisor`).

    Raises:
        ConfigError: one line naming the fix.
    """
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise ConfigError(
            f"data.micro_batches={micro_batches!r} must be an integer >= 1 "
            f"(1: no gradient accumulation)"
        )
    per_device = batch_size // batch_divisor
    if batch_size % batch_divisor or per_device % micro_batches:
        divisors = [m for m in range(1, per_device + 1) if per_device % m == 0]
        raise ConfigError(
            f"data.micro_batches={micro_batches} does not divide the per-device batch "
            f"{batch_size}/{batch_divisor}={batch_size / batch_divisor:g} rows; use one of "
            f"{divisors} or change data.batch_size to a multiple of "
            f"{batch_divisor * micro_batches}"
        )


def split(batch: dict, micro_batches: int, mesh: Mesh | None = None) -> dict:
    """[B, ...] arrays -> [M, B/M, ...]; micro-batch m holds rows m, m+M, m+2M, ...

    With `mesh`, dim 1 keeps the batch sharding, so each device's slice of
    every micro-batch is rows it already holds.
    """

    def one(x):
        rows = x.shape[0]
        micro = x.reshape((rows // micro_batches, micro_batches) + x.shape[1:])
        micro = jnp.swapaxes(micro, 0, 1)
        if mesh is not None:
            spec = P(None, sharding.BATCH_AXES, *([None] * (x.ndim - 1)))
            micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, spec))
        return micro

    return {k: one(v) for k, v in batch.items()}


def value_and_grad(
    loss_fn: Callable,
    trainables,
    batch: dict,
    micro_batches: int,
    *,
    counts_fn: Callable[[dict], dict],
    mesh: Mesh | None = None,
    constant_metrics: Sequence[str] = (),
):
    """(loss, metrics), grads of the global batch, accumulated over micro-batches.

    Args:
        loss_fn: (trainables, batch, token_counts) -> (loss, metrics). With
            token_counts None it returns per-token means over `batch`; with a
            {term: global token count} dict each term is its sum over `batch`
            divided by that count (so the terms of disjoint parts of a batch
            add up to the whole batch's means).
        trainables: what to differentiate.
        batch: the global batch, every array batch-dim first.
        micro_batches: M >= 1 (1: a plain `jax.value_and_grad`, the same program
            as without accumulation).
        counts_fn: batch -> {term: token count of the whole batch}.
        mesh: keeps each micro-batch spread over the batch axes (None: let XLA
            place it).
        constant_metrics: metrics equal in every micro-batch (e.g. α, a function
            of the step): taken from the last one instead of added up.

    Returns:
        ((loss, metrics), grads) as `jax.value_and_grad(..., has_aux=True)` gives.

    Raises:
        ConfigError: `micro_batches` does not divide the per-device batch (at trace time).
    """
    if micro_batches == 1:
        return jax.value_and_grad(lambda t: loss_fn(t, batch, None), has_aux=True)(trainables)
    rows = next(iter(batch.values())).shape[0]
    check_micro_batches(micro_batches, rows, 1 if mesh is None else sharding.batch_divisor(mesh))
    counts = counts_fn(batch)
    grad_fn = jax.value_and_grad(lambda t, b: loss_fn(t, b, counts), has_aux=True)
    micro = split(batch, micro_batches, mesh)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, trainables, first)
    )

    def body(total, micro_batch):
        (loss, metrics), grads = grad_fn(trainables, micro_batch)
        (loss_sum, metrics_sum), grads_sum = total
        metrics_sum = {
            k: v if k in constant_metrics else metrics_sum[k] + v for k, v in metrics.items()
        }
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return ((loss_sum + loss, metrics_sum), grads_sum), None

    total, _ = jax.lax.scan(body, zeros, micro)
    return total
