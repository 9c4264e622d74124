"""Token-tiled logit losses: NLL, KD and top-1 agreement without [B,T,V] in fp32.

At the paper's shape (batch 256 × 2048 tokens, V = 32k) the full fp32 logits
are 64 GiB, and their softmax and gradient as much again. Here the sequence
axis is cut into chunks (every tile keeps the whole, possibly device-sharded,
batch axis: ~``tile_tokens`` tokens per tile); each tile computes its
logits ``hidden_tile @ embedding.T`` (exactly ``model.unembed``: Gemma 3 has
no final soft-cap; the matmul runs in the hidden's dtype, then upcasts to
fp32), calls a per-tile loss function and keeps only per-token outputs
(the tiling itself is ``trainer.model.tiling``, shared with the teacher's top-k).
The tile body is wrapped in ``jax.checkpoint``, so the backward pass
recomputes each tile's logits instead of storing them: peak logit memory is
one tile (``tile_tokens × V``), at the price of one extra unembed matmul.
All requested terms (e.g. NLL + KD + top-1) come from the same logits, so KD
costs one logit pass, not two.

Stable signatures (the trainer codes against these)::

    tiled_logit_losses(hidden_BxTxD, embedding_VxD, per_tile_fn,
                       token_inputs={"targets": [B,T], ...},
                       tile_tokens=1024) -> {name: fp32 [B, T]}
    logit_terms_fn(nll=True, kd=False, top1=False, temperature=1.0,
                   tail="zero", divergence="forward_kl", signal="topk") -> per_tile_fn

``per_tile_fn(logits_NxV, inputs) -> {name: [N]}`` receives fp32 logits of one
tile (N = B × chunk tokens, flattened) and the matching slices (``[N, ...]``)
of ``token_inputs``. A T that is not a multiple of the chunk is zero-padded;
padded positions are computed and dropped, so they add nothing to values or
gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from trainer.model import tiling
from trainer.model.errors import ModelInputError
from trainer.training import loss_options, losses, sampled_kd

PerTileFn = Callable[[jax.Array, Mapping[str, jax.Array]], Mapping[str, jax.Array]]

# Keys that logit_terms_fn reads from token_inputs: the shifted tokens (NLL) and the typed
# teacher signal of the KD and top-1 terms (signals.TopkSignal or signals.SampledSignal).
TARGETS = "targets"
TEACHER = "teacher"


def tile_logits(hidden_NxD: jax.Array, embedding_VxD: jax.Array) -> jax.Array:
    """fp32 logits for a tile of tokens, as ``model.unembed`` computes them.

    The product runs in the hidden's dtype (bf16 in mixed precision, like the
    model's unembed) and is upcast afterwards, so tiled and untiled training
    see the same numbers.
    """
    logits_NxV = jnp.einsum("nd,vd->nv", hidden_NxD, embedding_VxD.astype(hidden_NxD.dtype))
    return logits_NxV.astype(jnp.float32)


def _check_inputs(hidden_BxTxD, embedding_VxD, token_inputs, tile_tokens):
    if hidden_BxTxD.ndim != 3:
        raise ModelInputError(
            f"hidden must be [B, T, D], got shape {hidden_BxTxD.shape}; pass the final hidden states"
        )
    if embedding_VxD.ndim != 2 or embedding_VxD.shape[1] != hidden_BxTxD.shape[2]:
        raise ModelInputError(
            f"embedding must be [V, D={hidden_BxTxD.shape[2]}], got {embedding_VxD.shape}; "
            "pass model.embedding_table(params)"
        )
    if not isinstance(tile_tokens, int) or tile_tokens <= 0:
        raise ModelInputError(
            f"tile_tokens must be a positive int, got {tile_tokens!r}; use e.g. 1024"
        )
    for name, tree in token_inputs.items():
        for x in jax.tree_util.tree_leaves(tree):
            if tuple(x.shape[:2]) == tuple(hidden_BxTxD.shape[:2]):
                continue
            raise ModelInputError(
                f"token input {name!r} has shape {x.shape}, expected leading [B, T] = "
                f"{hidden_BxTxD.shape[:2]}; align it with the hidden states (shift targets by one)"
            )


def tiled_logit_losses(
    hidden_BxTxD: jax.Array,
    embedding_VxD: jax.Array,
    per_tile_fn: PerTileFn,
    token_inputs: Mapping[str, jax.Array] | None = None,
    tile_tokens: int = 1024,
) -> dict[str, jax.Array]:
    """Per-token logit losses computed tile by tile with recomputation.

    Differentiable w.r.t. ``hidden_BxTxD`` and ``embedding_VxD``; the gradient
    equals the untiled one (same fp32 arithmetic per token).

    Args:
      hidden_BxTxD: final hidden states (after the final norm).
      embedding_VxD: the tied embedding table (``model.embedding_table``).
      per_tile_fn: ``(logits_NxV fp32, {name: [N, ...]}) -> {name: [N]}``,
        e.g. from ``logit_terms_fn``.
      token_inputs: per-token arrays (or pytrees of them: the teacher signal)
        with leading ``[B, T]``, sliced into tiles alongside the hidden states.
      tile_tokens: tokens per tile across the batch; memory ∝ tile_tokens × V.
        Each tile covers all B rows and ``max(1, tile_tokens // B)`` positions
        (at most T), so per device it holds its local rows only.

    Returns:
      ``{name: fp32 [B, T]}`` as returned by ``per_tile_fn``.

    Raises:
      ModelInputError: inconsistent shapes or a non-positive tile size.
    """
    token_inputs = dict(token_inputs or {})
    _check_inputs(hidden_BxTxD, embedding_VxD, token_inputs, tile_tokens)
    missing = [k for k in getattr(per_tile_fn, "required_inputs", ()) if k not in token_inputs]
    if missing:
        raise ModelInputError(
            f"token_inputs lacks {missing} needed by the requested loss terms; pass them "
            "(targets from the shifted tokens, teacher: the decoded top-k or sampled signal)"
        )

    def flat(x_BxCx_):
        return x_BxCx_.reshape((-1,) + x_BxCx_.shape[2:])

    def tile_fn(hidden_BxCxD, inputs):
        inputs_N = jax.tree_util.tree_map(flat, inputs)
        out = per_tile_fn(tile_logits(flat(hidden_BxCxD), embedding_VxD), inputs_N)
        return {k: v.reshape(hidden_BxCxD.shape[:2]) for k, v in out.items()}

    # Save nothing from the tile but its inputs: the backward pass recomputes
    # the logits. prevent_cse=False is safe (and lets XLA fuse) because under
    # lax.map (a scan) the recomputation cannot be CSE'd with the forward.
    one_tile = jax.checkpoint(tile_fn, prevent_cse=False)
    out = tiling.map_token_tiles(
        lambda xs: one_tile(*xs), (hidden_BxTxD, token_inputs), tile_tokens
    )
    return {name: v.astype(jnp.float32) for name, v in out.items()}


def logit_terms_fn(
    nll: bool = True,
    kd: bool = False,
    top1: bool = False,
    temperature: float = 1.0,
    tail: str | loss_options.TailMode = "zero",
    divergence: str | loss_options.Divergence = "forward_kl",
    signal: str | loss_options.Signal = "topk",
) -> PerTileFn:
    """Builds a per-tile function returning any of NLL, KD and top-1 agreement.

    Token inputs read: ``"targets"`` (for nll); for kd and top1 ``"teacher"``,
    the typed signal (``signals.TopkSignal`` or ``signals.SampledSignal``, as
    ``signal`` says). Outputs use the same names as the flags:
    ``{"nll": ..., "kd": ..., "top1": ...}``; KD is without τ²/α.

    Raises:
      ModelInputError: no term requested.
      ConfigError: bad KD tail / divergence / temperature / signal,
        or a setting the sampled signal cannot honour (checked here, before
        anything is traced).
    """
    if not (nll or kd or top1):
        raise ModelInputError(
            "logit_terms_fn needs at least one of nll, kd, top1; set e.g. nll=True"
        )
    signal = loss_options.parse_signal(signal)
    if kd:
        tail = loss_options.parse_tail_mode(tail)
        divergence = loss_options.parse_divergence(divergence)
        temperature = loss_options.check_temperature(temperature, tail)
        if signal is loss_options.Signal.SAMPLED:
            loss_options.check_sampled_settings(temperature, divergence)

    def per_tile_fn(logits_NxV, inputs):
        out = {}
        if nll:
            out["nll"] = losses.nll(logits_NxV, inputs[TARGETS])
        teacher = inputs.get(TEACHER)
        if signal is loss_options.Signal.SAMPLED:
            if kd:
                out["kd"] = sampled_kd.kd_sampled(logits_NxV, teacher)
            if top1:
                out["top1"] = sampled_kd.top1_agreement_sampled(logits_NxV, teacher)
            return out
        if kd:
            out["kd"] = losses.kd_topk(
                logits_NxV,
                teacher,
                temperature,
                tail=tail,
                divergence=divergence,
            )
        if top1:
            out["top1"] = losses.top1_agreement(logits_NxV, teacher)
        return out

    required = ([TARGETS] if nll else []) + ([TEACHER] if (kd or top1) else [])
    per_tile_fn.required_inputs = tuple(required)
    return per_tile_fn


def tiled_weighted_loss(
    hidden_BxTxD: jax.Array,
    embedding_VxD: jax.Array,
    per_tile_fn: PerTileFn,
    token_inputs: Mapping[str, jax.Array],
    weights: Mapping[str, jax.Array],
    tile_tokens: int = 1024,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Σ_name Σ_(b,t) weights[name] · term_name, with its gradient computed in the forward pass.

    The same terms as `tiled_logit_losses`, but the caller says up front how
    each per-token term enters the loss (its weight: mask × coefficient /
    token count, e.g. α·τ²·mask/count for KD), so each tile's gradient can be
    taken while its logits exist: one pass over the tiles computes the
    student's and (with a live teacher) the teacher's tile logits once, the
    terms, and the gradient w.r.t. the hidden states and the embedding. No
    tile is recomputed in the backward pass, which is then elementwise: per
    tile this saves one student unembed matmul (3 [N,D]×[D,V] products instead
    of 4) and, with a live teacher, its whole second unembed (1 instead of 2).
    Memory: the same one tile of logits, plus the gradient w.r.t. the hidden
    states [B, T, D] (float32) kept for the backward pass.

    The returned loss's value is the weighted sum and its gradient w.r.t.
    `hidden_BxTxD` and `embedding_VxD` equals that of
    `Σ weights · tiled_logit_losses(...)` (tests/training/test_tiled_weighted_loss.py);
    `weights` and `token_inputs` get no gradient (stop_gradient: masks,
    schedule coefficients, the teacher signal).

    Args:
      hidden_BxTxD, embedding_VxD, per_tile_fn, token_inputs, tile_tokens: as
        `tiled_logit_losses`.
      weights: {term name: [B, T] weight}; every name must be a term
        `per_tile_fn` returns (terms without a weight are returned, not weighed).

    Returns:
      (fp32 scalar loss, {name: fp32 [B, T]} per-token terms without gradient,
      for metrics).

    Raises:
      ModelInputError: inconsistent shapes, a non-positive tile size, or a
        weight of a shape other than [B, T].
    """
    token_inputs = dict(token_inputs)
    _check_inputs(hidden_BxTxD, embedding_VxD, token_inputs, tile_tokens)
    for name, w in weights.items():
        if tuple(w.shape) != tuple(hidden_BxTxD.shape[:2]):
            raise ModelInputError(
                f"weight {name!r} has shape {w.shape}, expected [B, T] = "
                f"{hidden_BxTxD.shape[:2]}; give one weight per token"
            )
    sg = jax.lax.stop_gradient
    hidden_c, embedding_c = sg(hidden_BxTxD), sg(embedding_VxD)
    inputs_c = jax.tree_util.tree_map(sg, token_inputs)
    weights_c = {k: sg(w).astype(jnp.float32) for k, w in weights.items()}
    b, t = hidden_BxTxD.shape[:2]
    chunk, num_tiles = tiling.tile_shape(b, t, tile_tokens)

    def tiles(x):
        return tiling.to_tiles(x, num_tiles, chunk)

    def flat(x_BxCx_):
        return x_BxCx_.reshape((-1,) + x_BxCx_.shape[2:])

    def one_tile(grad_embedding_VxD, xs):
        hidden_BxCxD, inputs, w = xs
        inputs_N = jax.tree_util.tree_map(flat, inputs)
        hidden_NxD = flat(hidden_BxCxD)

        def weighted(h_NxD, e_VxD):
            out = per_tile_fn(tile_logits(h_NxD, e_VxD), inputs_N)
            # where(), as losses.masked_mean: a non-finite term at a weight-0 token adds nothing.
            total = sum(
                jnp.sum(jnp.where(flat(w[k]) != 0, out[k].astype(jnp.float32) * flat(w[k]), 0.0))
                for k in w
            )
            return jnp.asarray(total, jnp.float32), out

        (total, out), (g_h_NxD, g_e_VxD) = jax.value_and_grad(
            weighted, argnums=(0, 1), has_aux=True
        )(hidden_NxD, embedding_c)
        values = {k: v.astype(jnp.float32).reshape(hidden_BxCxD.shape[:2]) for k, v in out.items()}
        return grad_embedding_VxD + g_e_VxD.astype(jnp.float32), (
            total,
            g_h_NxD.reshape(hidden_BxCxD.shape),
            values,
        )

    # Padded positions of the last tile have weight 0 (to_tiles pads with zeros): they add
    # nothing to the loss or its gradient.
    grad_embedding_VxD, (totals, g_hidden, values) = jax.lax.scan(
        one_tile,
        jnp.zeros(embedding_VxD.shape, jnp.float32),
        (
            tiles(hidden_c),
            jax.tree_util.tree_map(tiles, inputs_c),
            jax.tree_util.tree_map(tiles, weights_c),
        ),
    )
    grad_hidden_BxTxD = tiling.from_tiles(g_hidden, t)
    # Value: the weighted sum. Gradient: the one computed above (the surrogate's terms
    # cancel in value and are linear in the two differentiable inputs).
    surrogate = jnp.vdot(grad_hidden_BxTxD, hidden_BxTxD.astype(jnp.float32)) + jnp.vdot(
        grad_embedding_VxD, embedding_VxD.astype(jnp.float32)
    )
    loss = jnp.sum(totals) + surrogate - sg(surrogate)
    terms = {name: tiling.from_tiles(v, t) for name, v in values.items()}
    return loss, terms
