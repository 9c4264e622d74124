"""KV-cache decoding for the Gemma 3 decoder: a prefill of the prompt, then one token per step.

The attention of `trainer.model.gemma3.forward`, computed incrementally: the
same q/k/v projections, QK-norm, RoPE tables (local / global bases, global
linear scaling), GQA and masked softmax (`gemma3.project_qkv`,
`qk_norm_rope`, `attend`, `project_out`, `mlp_residual` are shared, not
copied), so prefill + decode logits equal the full forward's at every
position (tests/model/test_model_generate.py, <= 1e-5 in fp32). Attention
always takes the XLA path here (cfg.attention_impl = cudnn is a training
kernel for full [T, T] attention).

Layout (why): rows are **left-padded** inside the cache. Every row then sits
at the same buffer index at every step, so a step writes one cache slot for
the whole batch (a `dynamic_update_slice`, no scatter), and a local layer
keeps only a ring of `min(window, max_len)` slots: slot `s` holds the key
of buffer index `i - ((i - s) mod S)` at step `i`, which is exactly the
window. A row's RoPE position is its own token index (buffer index minus
its left padding, `offsets_B`), and its padding slots are masked as keys, so
a row computes the same numbers wherever it sits and whatever its padding.
`trainer.model.generate` takes right-padded prompts and left-aligns them.

Cache per layer l (S_l slots; S_l = min(W, max_len) local, max_len global):
    keys[l], values[l]  [B, S_l, K, H] in the compute dtype
    offsets_B           int32 [B]: left padding (buffer index of the row's first token)
    index               int32 []: the buffer index the next decode step writes
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import gemma3 as model
from trainer.model.errors import ModelInputError
from trainer.model.model_config import ModelConfig

Params = model.Params


@flax.struct.dataclass
class KVCache:
    """Per-layer key/value rings of a batch of left-padded rows (a pytree)."""

    keys: tuple[jax.Array, ...]  # per layer [B, S_l, K, H]
    values: tuple[jax.Array, ...]  # per layer [B, S_l, K, H]
    offsets_B: jax.Array  # int32 [B]: left padding of each row
    index: jax.Array  # int32 []: buffer index of the next token to write


def cache_slots(cfg: ModelConfig, max_len: int) -> tuple[int, ...]:
    """Slots S_l of each layer's ring: min(window, max_len) local, max_len global."""
    return tuple(
        max_len if cfg.is_global(i) else min(cfg.sliding_window, max_len)
        for i in range(cfg.num_layers)
    )


def _layer(params: Params, i: int) -> Params:
    return jax.tree_util.tree_map(lambda a: a[i], params["layers"])


def _ropes(positions, cfg: ModelConfig):
    """(local, global) cos/sin tables for per-row positions [B, T] -> [B, T, H]."""
    dtype = jnp.dtype(cfg.dtype)
    local = model.rope_tables(positions, cfg.head_dim, cfg.rope_local_base, 1.0, dtype)
    glob = model.rope_tables(
        positions, cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale, dtype
    )
    return local, glob


def _attention_sublayer(p, x_BxTxD, rope, keys_fn, keep_mask, cfg: ModelConfig):
    """x + post_norm(attn(pre_norm(x))) with keys/values chosen by `keys_fn`.

    keys_fn(k_BxTxKxH, v_BxTxKxH) -> (keys, values, cache entry): what the
    queries attend over (the prompt itself in prefill, the cache in decoding).
    """
    eps = cfg.rms_norm_eps
    h = model.rms_norm(x_BxTxD, p["pre_attn_norm"], eps)
    q, k, v = model.project_qkv(p["attn"], h)
    cos, sin = rope
    q, k = model.qk_norm_rope(q, k, p["attn"]["q_norm"], p["attn"]["k_norm"], cos, sin, eps)
    keys, values, entry = keys_fn(k, v)
    out = model.attend(q, keys, values, keep_mask, cfg.query_scale)
    x_BxTxD = x_BxTxD + model.rms_norm(model.project_out(p["attn"], out), p["post_attn_norm"], eps)
    return x_BxTxD, entry


def _logits(params: Params, x_BxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """fp32 logits [B, V] of the last residual stream (final norm + tied unembedding)."""
    hidden = model.rms_norm(x_BxD, params["final_norm"], cfg.rms_norm_eps)
    return model.unembed(params, hidden, cfg).astype(jnp.float32)


def prefill(
    params: Params, prompts_BxP: jax.Array, offsets_B: jax.Array, cfg: ModelConfig, max_len: int
) -> tuple[jax.Array, KVCache]:
    """Runs the left-padded prompts through the decoder and fills the cache.

    Args:
        params: model params (`gemma3.init_params` tree).
        prompts_BxP: int32 left-padded prompts; row b's tokens are
            prompts_BxP[b, offsets_B[b]:] (the padding values do not matter).
        offsets_B: int32 left padding per row, in [0, P).
        cfg: model config (static under jit).
        max_len: buffer length P + new tokens (static): the global layers' slots.

    Returns:
        (fp32 logits [B, V] predicting each row's next token, the cache with
        index = P).
    """
    B, P = prompts_BxP.shape
    if not 0 < P <= max_len:
        raise ModelInputError(f"prompt length {P} must be in [1, max_len={max_len}]")
    index_P = jnp.arange(P, dtype=jnp.int32)
    positions_BxP = index_P[None, :] - offsets_B[:, None]
    ropes = _ropes(positions_BxP, cfg)
    causal_PxP = index_P[None, :] <= index_P[:, None]
    distance_PxP = index_P[:, None] - index_P[None, :]
    real_BxP = index_P[None, :] >= offsets_B[:, None]  # keys that are prompt tokens
    x = model.embed(params, prompts_BxP, cfg)
    keys, values = [], []
    for i, slots in enumerate(cache_slots(cfg, max_len)):
        is_global = cfg.is_global(i)
        window = P if is_global else cfg.sliding_window
        keep = causal_PxP & (distance_PxP < window)
        keep_Bx1x1xPxP = (keep[None] & real_BxP[:, None, :])[:, None, None]
        # Buffer indices that stay in this layer's ring after the prompt, and their slots.
        kept = np.arange(max(0, P - slots), P)

        def to_ring(k, v, kept=kept, slots=slots):
            ring = [jnp.zeros((B, slots) + a.shape[2:], a.dtype) for a in (k, v)]
            entry = tuple(r.at[:, kept % slots].set(a[:, kept]) for r, a in zip(ring, (k, v)))
            return k, v, entry

        p = _layer(params, i)
        rope = ropes[1] if is_global else ropes[0]
        x, (k_ring, v_ring) = _attention_sublayer(p, x, rope, to_ring, keep_Bx1x1xPxP, cfg)
        x = model.mlp_residual(p, x, cfg)
        keys.append(k_ring)
        values.append(v_ring)
    cache = KVCache(
        keys=tuple(keys),
        values=tuple(values),
        offsets_B=offsets_B.astype(jnp.int32),
        index=jnp.asarray(P, jnp.int32),
    )
    return _logits(params, x[:, -1], cfg), cache


def decode_step(
    params: Params, cache: KVCache, tokens_B: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, KVCache]:
    """Feeds one token per row at buffer index `cache.index`.

    Args:
        params: model params.
        cache: from `prefill` or a previous step; its index must be below
            max_len (not checked under jit: a write past the end wraps).
        tokens_B: int32 token of each row at that index.
        cfg: model config (static under jit).

    Returns:
        (fp32 logits [B, V] predicting each row's next token, the cache with
        this token's keys/values written and index + 1).
    """
    i = cache.index
    positions_Bx1 = (i - cache.offsets_B)[:, None]
    ropes = _ropes(positions_Bx1, cfg)
    x = model.embed(params, tokens_B[:, None], cfg)
    keys, values = [], []
    for layer, (k_cache, v_cache) in enumerate(zip(cache.keys, cache.values)):
        slots = k_cache.shape[1]
        slot = i % slots
        # The buffer index each slot holds after this write (negative: never written).
        held_S = i - jnp.mod(i - jnp.arange(slots, dtype=jnp.int32), slots)
        keep_Bx1x1x1xS = (held_S[None, :] >= cache.offsets_B[:, None])[:, None, None, None]

        def into_cache(k, v, k_cache=k_cache, v_cache=v_cache, slot=slot):
            k_new = jax.lax.dynamic_update_slice_in_dim(k_cache, k, slot, axis=1)
            v_new = jax.lax.dynamic_update_slice_in_dim(v_cache, v, slot, axis=1)
            return k_new, v_new, (k_new, v_new)

        p = _layer(params, layer)
        rope = ropes[1] if cfg.is_global(layer) else ropes[0]
        x, (k_new, v_new) = _attention_sublayer(p, x, rope, into_cache, keep_Bx1x1x1xS, cfg)
        x = model.mlp_residual(p, x, cfg)
        keys.append(k_new)
        values.append(v_new)
    cache = KVCache(keys=tuple(keys), values=tuple(values), offsets_B=cache.offsets_B, index=i + 1)
    return _logits(params, x[:, 0], cfg), cache
