"""The teacher signal as the losses see it: typed, decoded, batch dim first (jnp pytrees).

    batch = decode.decode_batch(stored, spec)   # -> Batch, inside the jitted step
    batch.topk.ids, batch.topk.logprobs         # TopkSignal: int32 / float32 [B,T,K]
    batch.sampled.ids, .counts, .logprobs       # SampledSignal: int32 / int32 / float32 [B,T,S]
    batch.hidden                                # float32 x/rms(x) [B,T,D] of the phase's teacher layer
    batch.hidden_by_layer[l]                    # the same, by layer (OPRD reads several)
    batch.loss_mask, batch.token_logprob        # float32 [B,T] (rollout stores, store/rollout.py)

Each value has one name from the manifest to the loss: the store field
("topk", "sampled", "hidden/<l>") is the attribute here, its stored arrays are
the codec's (store/topk_codecs.py, store/sampled.py, store/hidden_codecs.py).
The classes are pytrees, so the token tiling of the logit losses
(trainer.training.tiled_loss) slices them like any array.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import TypeVar

import jax

_T = TypeVar("_T")


def _pytree(cls: type[_T], fields: Iterable[str]) -> type[_T]:
    return jax.tree_util.register_dataclass(cls, data_fields=list(fields), meta_fields=[])


@functools.partial(_pytree, fields=("ids", "logprobs"))
@dataclasses.dataclass(frozen=True)
class TopkSignal:
    """The teacher's stored top-k at each position (predicting the next token).

    Attributes:
        ids: int32 [..., K] vocabulary ids (slots dropped by top-p: id 0).
        logprobs: float32 [..., K] log-probs at τ = 1, sorted descending (dropped slots: -inf).
    """

    ids: jax.Array
    logprobs: jax.Array


@functools.partial(_pytree, fields=("ids", "counts", "logprobs"))
@dataclasses.dataclass(frozen=True)
class SampledSignal:
    """The distinct ids of S draws from the teacher's full softmax at each position.

    Attributes:
        ids: int32 [..., S] (empty slots: id 0).
        counts: int32 [..., S] draws per id (sum S; empty slots 0).
        logprobs: float32 [..., S] teacher log-probs at τ = 1 (empty slots: -inf).
    """

    ids: jax.Array
    counts: jax.Array
    logprobs: jax.Array


@functools.partial(
    _pytree,
    fields=("tokens", "topk", "sampled", "hidden", "hidden_by_layer", "loss_mask", "token_logprob"),
)
@dataclasses.dataclass(frozen=True)
class Batch:
    """One decoded training batch: the fields a phase reads, None for the others.

    Attributes:
        tokens: int32 [B, T] packed token rows.
        topk: the top-k signal (a phase whose KD term reads top-k).
        sampled: the sampled signal (a phase whose KD term reads sampled logits).
        hidden: float32 [B, T, D] x / rms(x) of the phase's teacher layer (a hidden-state term
            on one layer).
        hidden_by_layer: {l: that array} of every "hidden/<l>" field read (one or several).
        loss_mask: float32 [B, T], 1 where token t is a completion token (on-policy phases).
        token_logprob: float32 [B, T], the teacher's log p(token t+1 | ≤ t) at τ = 1 (OPD's
            single-sample estimator; the last position 0).
    """

    tokens: jax.Array
    topk: TopkSignal | None = None
    sampled: SampledSignal | None = None
    hidden: jax.Array | None = None
    hidden_by_layer: dict[int, jax.Array] | None = None
    loss_mask: jax.Array | None = None
    token_logprob: jax.Array | None = None
