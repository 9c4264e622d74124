"""Gemma 3 text decoder as pure functions over a plain nested dict of params.

Why pure functions rather than flax.linen modules: the two features the
distillation methods need -- capturing the residual stream after chosen blocks
and running only the first `n` blocks (HLDF phase 1) -- are a matter of
*which slices of the layer stack run*, which is simplest to express directly
with `jax.lax.scan` over stacked params. Params are therefore always stored
stacked along a leading "layers" axis (scan or not), so a checkpoint does not
depend on `cfg.scan_layers`, and every array is a plain fp32 `jax.Array`
(no boxing) that the trainer shards via `param_logical_axes`.

Numerics follow Hugging Face `Gemma3ForCausalLM` (transformers 5.x), which is
the reference our import is tested against:
  * embedding lookup times sqrt(d_model) cast to the compute dtype;
  * every RMSNorm computes in fp32 as x * rsqrt(mean(x²) + eps) * (1 + w),
    then casts back to the compute dtype;
  * blocks: x += post_norm(attn(pre_norm(x))); x += post_norm(mlp(pre_norm(x)));
  * attention: QK-norm, then RoPE (rotate-half layout), scores scaled by
    query_pre_attn_scalar**-0.5, causal; local layers see keys with
    q - k < sliding_window; GQA by query-head groups sharing a K/V head;
    scores and softmax in fp32 (as `jax.nn.dot_product_attention`'s XLA path);
  * GeGLU MLP with tanh-approximated GELU; tied unembedding, no soft-cap.

Memory (docs/memory.md): the backward pass recomputes attention (scores,
mask, softmax, QK-norm, RoPE), RMSNorm's fp32 intermediates and GeGLU's
product instead of keeping them per layer; `cfg.remat` decides what else each
block recomputes; `activation_sharding` keeps activations on their batch
shard under FSDP.

Captures split the scan at capture boundaries (one scan per segment), so no
stack of all L layer outputs is ever built, also not in the backward pass.

Param tree (L layers, D model, F mlp, N heads, K kv heads, H head dim):
    embedding [V, D]                 # top-level key: the (tied) embedding
    final_norm [D]
    layers/pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm [L, D]
    layers/attn/q [L, D, N, H]; k, v [L, D, K, H]; o [L, N, H, D]
    layers/attn/q_norm, k_norm [L, H]
    layers/mlp/gate, up [L, D, F]; down [L, F, D]
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from trainer.model.errors import ModelInputError  # bad shapes, layer indices
from trainer.model.model_config import AttentionImpl, ModelConfig, RematPolicy, parse_remat

Params = dict[str, Any]


@flax.struct.dataclass
class ForwardOutput:
    """What `forward` returns (a pytree, so it can leave a jit).

    Attributes:
        final_hidden_BxTxD: residual stream after all L blocks and the final
            RMSNorm, in the compute dtype; None when fewer than L blocks ran.
        captured: {l: residual stream after l blocks, [B, T, D] compute dtype}.
    """

    final_hidden_BxTxD: jax.Array | None
    captured: dict[int, jax.Array]


# --------------------------------------------------------------------------- params


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random fp32 params; works under `jax.eval_shape` (for param counting).

    Projections use fan-in scaled normals (std 1/sqrt(fan_in)); the embedding
    uses std 1/sqrt(D) so that the sqrt(D)-scaled input has unit RMS and tied
    logits start O(1). RMSNorm weights start at 0, i.e. scale 1 (Gemma's 1+w).

    Args:
        cfg: model config.
        rng: a PRNG key.

    Returns:
        The param tree described in the module docstring.
    """
    L, D, F = cfg.num_layers, cfg.d_model, cfg.mlp_dim
    N, K, H, V = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
    keys = iter(jax.random.split(rng, 8))

    def normal(shape, fan_in):
        # Drawn flat then reshaped: XLA compiles a rank-1 threefry draw several
        # times faster than a rank-4/5 one (same distribution).
        flat = jax.random.normal(next(keys), (int(np.prod(shape)),), jnp.float32)
        return flat.reshape(shape) * fan_in**-0.5

    def zeros(shape):
        return jnp.zeros(shape, jnp.float32)

    return {
        "embedding": normal((V, D), D),
        "final_norm": zeros((D,)),
        "layers": {
            "pre_attn_norm": zeros((L, D)),
            "post_attn_norm": zeros((L, D)),
            "pre_mlp_norm": zeros((L, D)),
            "post_mlp_norm": zeros((L, D)),
            "attn": {
                "q": normal((L, D, N, H), D),
                "k": normal((L, D, K, H), D),
                "v": normal((L, D, K, H), D),
                "o": normal((L, N, H, D), N * H),
                "q_norm": zeros((L, H)),
                "k_norm": zeros((L, H)),
            },
            "mlp": {
                "gate": normal((L, D, F), D),
                "up": normal((L, D, F), D),
                "down": normal((L, F, D), F),
            },
        },
    }


def param_logical_axes(cfg: ModelConfig) -> Params:
    """Logical axis names per param dimension, same tree as `init_params`.

    Names: "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers".
    The trainer maps them to mesh axes (e.g. "embed" -> fsdp).
    """
    del cfg  # Shapes differ between configs, the axis names do not.
    norm = ("layers", "embed")
    return {
        "embedding": ("vocab", "embed"),
        "final_norm": ("embed",),
        "layers": {
            "pre_attn_norm": norm,
            "post_attn_norm": norm,
            "pre_mlp_norm": norm,
            "post_mlp_norm": norm,
            "attn": {
                "q": ("layers", "embed", "heads", "head_dim"),
                "k": ("layers", "embed", "kv_heads", "head_dim"),
                "v": ("layers", "embed", "kv_heads", "head_dim"),
                "o": ("layers", "heads", "head_dim", "embed"),
                "q_norm": ("layers", "head_dim"),
                "k_norm": ("layers", "head_dim"),
            },
            "mlp": {
                "gate": ("layers", "embed", "mlp"),
                "up": ("layers", "embed", "mlp"),
                "down": ("layers", "mlp", "embed"),
            },
        },
    }


def embedding_table(params: Params) -> jax.Array:
    """The tied [V, D] embedding (also the unembedding)."""
    return params["embedding"]


def count_params(params: Params, include_embedding: bool = True) -> int:
    """Number of scalars in `params` (arrays or `jax.ShapeDtypeStruct`s)."""
    total = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    if not include_embedding:
        total -= int(np.prod(params["embedding"].shape))
    return total


# --------------------------------------------------------------------------- layers


# Saving nothing inside: the backward pass keeps only the (compute-dtype) input
# and recomputes the fp32 intermediates, instead of keeping an fp32 copy of
# every normalised activation (q and k included) for every layer.
@functools.partial(
    jax.checkpoint, static_argnums=(2,), policy=jax.checkpoint_policies.nothing_saveable
)
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Gemma RMSNorm in fp32: x * rsqrt(mean(x²) + eps) * (1 + w), cast back."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def rope_tables(
    positions_T: jax.Array, head_dim: int, base: float, scale: float, dtype
) -> tuple[jax.Array, jax.Array]:
    """cos/sin [T, H] for rotate-half RoPE; linear scaling divides positions by `scale`.

    `positions_T` may also be per row, [B, T] (KV-cache decoding: ragged rows
    sit at different positions); the tables are then [B, T, H].
    """
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    inv_freq = jnp.asarray(inv_freq / scale, jnp.float32)
    freqs_TxH2 = positions_T.astype(jnp.float32)[..., None] * inv_freq
    emb_TxH = jnp.concatenate([freqs_TxH2, freqs_TxH2], axis=-1)
    # HF casts the tables to the activation dtype before rotating.
    return jnp.cos(emb_TxH).astype(dtype), jnp.sin(emb_TxH).astype(dtype)


def apply_rope(x_BxTxNxH: jax.Array, cos_TxH: jax.Array, sin_TxH: jax.Array) -> jax.Array:
    """Rotate-half RoPE (the layout of HF checkpoints); tables [T, H] or per row [B, T, H]."""
    half = x_BxTxNxH.shape[-1] // 2
    x1, x2 = x_BxTxNxH[..., :half], x_BxTxNxH[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos_TxH[..., None, :], sin_TxH[..., None, :]  # broadcast over heads
    return x_BxTxNxH * cos + rotated * sin


def qk_norm_rope(q_BxTxNxH, k_BxTxKxH, q_norm_H, k_norm_H, cos_TxH, sin_TxH, eps: float):
    """QK-norm then RoPE of raw q/k projections (training forward and KV-cache decoding)."""
    q_BxTxNxH = apply_rope(rms_norm(q_BxTxNxH, q_norm_H, eps), cos_TxH, sin_TxH)
    k_BxTxKxH = apply_rope(rms_norm(k_BxTxKxH, k_norm_H, eps), cos_TxH, sin_TxH)
    return q_BxTxNxH, k_BxTxKxH


def attend(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, keep_mask, scale: float) -> jax.Array:
    """Masked softmax attention of T queries over S keys, GQA by query-head groups.

    Numerics of jax.nn.dot_product_attention's XLA path: scores and softmax in
    fp32, probabilities cast to the value dtype. Shared by the training forward
    (S = T, causal) and KV-cache decoding (S = the cache).

    Args:
        q_BxTxNxH: normalised, rotated queries.
        k_BxSxKxH: normalised, rotated keys.
        v_BxSxKxH: values.
        keep_mask: bool, broadcastable to [B, K, G, T, S] (G = N // K): which
            keys each query sees, e.g. [T, S] or [B, 1, 1, T, S].
        scale: score multiplier (cfg.query_scale).

    Returns:
        [B, T, N, H] in the value dtype.
    """
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxSxKxH.shape[2]
    q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum(
        "btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32
    )
    scores = scores * jnp.asarray(scale, jnp.float32)
    scores = jnp.where(keep_mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
    out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH)
    return out_BxTxKxGxH.reshape(B, T, N, H)


def _attend_cudnn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, rope, window: int | None, cfg: ModelConfig):
    """RoPE + causal (optionally sliding-window) attention through JAX's cuDNN kernel."""
    cos, sin = rope
    q_BxTxNxH = apply_rope(q_BxTxNxH, cos, sin)
    k_BxTxKxH = apply_rope(k_BxTxKxH, cos, sin)
    # HF keeps key j for query i iff i - j < window; JAX's left window w keeps
    # i - j <= w, hence window - 1.
    local_window = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(
        q_BxTxNxH,
        k_BxTxKxH,
        v_BxTxKxH,
        scale=cfg.query_scale,
        is_causal=True,
        local_window_size=local_window,
        implementation=cfg.attention_impl,
    )


@functools.partial(
    jax.checkpoint, static_argnums=(8, 9), policy=jax.checkpoint_policies.nothing_saveable
)
def _attention_core(
    q_BxTxNxH,
    k_BxTxKxH,
    v_BxTxKxH,
    q_norm_H,
    k_norm_H,
    cos_TxH,
    sin_TxH,
    window,
    scale: float,
    eps: float,
):
    """QK-norm, RoPE, then causal attention keeping keys with 0 <= q - k < window.

    Takes the raw q/k/v projections; GQA by head groups. Numerics of
    jax.nn.dot_product_attention's XLA path (scores and softmax in fp32,
    probabilities cast to the value dtype). Wrapped in `jax.checkpoint`
    saving nothing: the backward pass keeps only the projections and
    recomputes the rest, so no layer keeps [B,N,T,T] scores, probabilities or
    mask, nor normalised/rotated copies of q and k (docs/memory.md: they took
    most of the training step's memory). The window is data (a traced int is
    fine), so local and global layers share one code path and a scan over
    layers needs no `lax.cond`, whose backward keeps both branches' residuals.
    """
    q_BxTxNxH, k_BxTxKxH = qk_norm_rope(
        q_BxTxNxH, k_BxTxKxH, q_norm_H, k_norm_H, cos_TxH, sin_TxH, eps
    )
    T = q_BxTxNxH.shape[1]
    # The mask comes from iotas: XLA fuses it into the select, nothing [T,T] is stored.
    q_pos = jax.lax.broadcasted_iota(jnp.int32, (T, T), 0)
    k_pos = jax.lax.broadcasted_iota(jnp.int32, (T, T), 1)
    keep_TxT = (k_pos <= q_pos) & (q_pos - k_pos < window)
    return attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, keep_TxT, scale)


def attention(p: Params, x_BxTxD: jax.Array, is_global, ropes, cfg: ModelConfig) -> jax.Array:
    """Self-attention of one block.

    Args:
        p: this layer's "attn" params (no layers axis).
        x_BxTxD: normalized input, compute dtype.
        is_global: Python bool (unrolled layers) or traced bool (scanned layers).
        ropes: {"local": (cos, sin), "global": (cos, sin)}.
        cfg: model config.
    """
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = project_qkv(p, x_BxTxD)
    if cfg.attention_impl == AttentionImpl.CUDNN.value:
        q_BxTxNxH = rms_norm(q_BxTxNxH, p["q_norm"], cfg.rms_norm_eps)
        k_BxTxKxH = rms_norm(k_BxTxKxH, p["k_norm"], cfg.rms_norm_eps)
        local_fn = functools.partial(
            _attend_cudnn, rope=ropes["local"], window=cfg.sliding_window, cfg=cfg
        )
        global_fn = functools.partial(_attend_cudnn, rope=ropes["global"], window=None, cfg=cfg)
        if isinstance(is_global, (bool, np.bool_)):
            out_BxTxNxH = (global_fn if is_global else local_fn)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
        else:
            # The kernel's window is static: cond runs only the chosen branch.
            out_BxTxNxH = jax.lax.cond(
                is_global, global_fn, local_fn, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH
            )
    else:
        # Select the layer type's RoPE tables and window as data ([T,H] tables are cheap).
        (cos_l, sin_l), (cos_g, sin_g) = ropes["local"], ropes["global"]
        cos, sin = jnp.where(is_global, cos_g, cos_l), jnp.where(is_global, sin_g, sin_l)
        T = x_BxTxD.shape[1]
        window = jnp.where(is_global, T, cfg.sliding_window)
        out_BxTxNxH = _attention_core(
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            p["q_norm"],
            p["k_norm"],
            cos,
            sin,
            window,
            cfg.query_scale,
            cfg.rms_norm_eps,
        )
    return project_out(p, out_BxTxNxH)


def project_qkv(p: Params, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Raw q [B,T,N,H], k and v [B,T,K,H] projections of one layer ("attn" params)."""
    dtype = x_BxTxD.dtype
    q_BxTxNxH = jnp.einsum("btd,dnh->btnh", x_BxTxD, p["q"].astype(dtype))
    k_BxTxKxH = jnp.einsum("btd,dkh->btkh", x_BxTxD, p["k"].astype(dtype))
    v_BxTxKxH = jnp.einsum("btd,dkh->btkh", x_BxTxD, p["v"].astype(dtype))
    q, k, v = (checkpoint_name(a, "qkv") for a in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH))
    return q, k, v


def project_out(p: Params, out_BxTxNxH: jax.Array) -> jax.Array:
    """The attention output projection [B,T,N,H] -> [B,T,D]."""
    dtype = out_BxTxNxH.dtype
    out_BxTxD = jnp.einsum("btnh,nhd->btd", out_BxTxNxH, p["o"].astype(dtype))
    return checkpoint_name(out_BxTxD, "attn_out")


@functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
def _geglu_down(gate_BxTxF: jax.Array, up_BxTxF: jax.Array, down_FxD: jax.Array) -> jax.Array:
    """down(gelu_tanh(gate) * up); the backward keeps gate and up and recomputes
    the F-wide product (elementwise) instead of keeping it and GELU's intermediates."""
    hidden_BxTxF = jax.nn.gelu(gate_BxTxF, approximate=True) * up_BxTxF
    return jnp.einsum("btf,fd->btd", hidden_BxTxF, down_FxD)


def mlp(p: Params, x_BxTxD: jax.Array) -> jax.Array:
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""
    dtype = x_BxTxD.dtype
    gate_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, p["gate"].astype(dtype))
    up_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, p["up"].astype(dtype))
    out_BxTxD = _geglu_down(gate_BxTxF, up_BxTxF, p["down"].astype(dtype))
    return checkpoint_name(out_BxTxD, "mlp_out")


def block(p: Params, x_BxTxD: jax.Array, is_global, ropes, cfg: ModelConfig) -> jax.Array:
    """One decoder block with Gemma's pre- and post-norms around both sublayers."""
    eps = cfg.rms_norm_eps
    h = rms_norm(x_BxTxD, p["pre_attn_norm"], eps)
    h = attention(p["attn"], h, is_global, ropes, cfg)
    return mlp_residual(p, x_BxTxD + rms_norm(h, p["post_attn_norm"], eps), cfg)


def mlp_residual(p: Params, x_BxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The block's second half: x + post_norm(mlp(pre_norm(x))) (one layer's params)."""
    eps = cfg.rms_norm_eps
    h = mlp(p["mlp"], rms_norm(x_BxTxD, p["pre_mlp_norm"], eps))
    return x_BxTxD + rms_norm(h, p["post_mlp_norm"], eps)


# --------------------------------------------------------------------------- model


def embed(params: Params, tokens_BxT: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Token embeddings times sqrt(D), in the compute dtype (as HF: scale cast first)."""
    dtype = jnp.dtype(cfg.dtype)
    x_BxTxD = jnp.take(params["embedding"], tokens_BxT, axis=0).astype(dtype)
    return x_BxTxD * jnp.asarray(cfg.d_model**0.5, dtype)


# jax.checkpoint policy per RematPolicy (NONE: no checkpoint at all).
_REMAT_POLICIES = {
    RematPolicy.FULL: jax.checkpoint_policies.nothing_saveable,
    RematPolicy.DOTS_NO_BATCH: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    RematPolicy.QKV_AND_OUTPUTS: jax.checkpoint_policies.save_only_these_names(
        "qkv", "attn_out", "mlp_out"
    ),
}


def _remat(fn, cfg: ModelConfig, prevent_cse: bool = True):
    """`fn` (one block) under the config's remat policy."""
    policy = parse_remat(cfg.remat)
    if policy is RematPolicy.NONE:
        return fn
    return jax.checkpoint(fn, policy=_REMAT_POLICIES[policy], prevent_cse=prevent_cse)


# The sharding of [B, T, D] activations while tracing a step (None: let XLA
# propagate). Set by the trainer with `activation_sharding`, read by `forward`.
_ACTIVATION_SHARDING = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(sharding_BxTxD):
    """Pins the residual stream's sharding while a step is traced (jit tracing time).

    Why: params are FSDP-sharded along d_model and the batch along the same
    mesh axis; left alone, XLA's sharding propagation follows the embedding
    table from the first gather and shards activations along D, gathering the
    whole global batch onto every device (each chip then held all rows'
    activations: 4x the memory on a 4-chip mesh). Constraining the residual
    stream to the batch sharding keeps each device on its own rows and
    gathers the (small) weights instead, as FSDP means to.

    Args:
        sharding_BxTxD: a `jax.sharding.Sharding` for [B, T, D] arrays, or None.
    """
    token = _ACTIVATION_SHARDING.set(sharding_BxTxD)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def _constrain(x_BxTxD: jax.Array) -> jax.Array:
    sharding_BxTxD = _ACTIVATION_SHARDING.get()
    if sharding_BxTxD is None:
        return x_BxTxD
    return jax.lax.with_sharding_constraint(x_BxTxD, sharding_BxTxD)


def _run_blocks(layers: Params, x_BxTxD, start: int, stop: int, ropes, cfg: ModelConfig):
    """Applies blocks [start, stop) (0-based) to the residual stream."""
    if cfg.scan_layers:
        # A segment short of the whole stack (a captured layer, HLDF's first half) is indexed
        # inside the body: slicing a[start:stop] here copied its weights (gemma3-4b dump split
        # at layer 17 on v5e:2x2: 7.00 -> 1.79 GiB of temporaries per chip; trainer.plan).
        whole = (start, stop) == (0, cfg.num_layers)
        segment = layers if whole else jnp.arange(start, stop)
        flags = jnp.asarray(cfg.global_layers[start:stop])

        def body(x, inputs):
            layer_params, is_global = inputs
            if not whole:  # layer_params is the block index
                layer_params = jax.tree_util.tree_map(
                    lambda a, i=layer_params: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
                    layers,
                )
            return _constrain(block(layer_params, x, is_global, ropes, cfg)), None

        # prevent_cse is only needed outside scan (which already keeps recomputation apart).
        x_BxTxD, _ = jax.lax.scan(_remat(body, cfg, prevent_cse=False), x_BxTxD, (segment, flags))
        return x_BxTxD
    for i in range(start, stop):
        layer_params = jax.tree_util.tree_map(lambda a, i=i: a[i], layers)
        fn = functools.partial(block, is_global=cfg.is_global(i), ropes=ropes, cfg=cfg)
        x_BxTxD = _constrain(_remat(fn, cfg)(layer_params, x_BxTxD))
    return x_BxTxD


def _check_layers(cfg: ModelConfig, capture_layers: Sequence[int], num_blocks: int | None):
    """Validates and normalizes (capture_layers, num_blocks)."""
    L = cfg.num_layers
    n = L if num_blocks is None else num_blocks
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= L:
        raise ModelInputError(
            f"num_blocks={num_blocks!r} is outside [1, {L}]; pass an integer "
            f"in that range or None for all blocks"
        )
    layers = []
    for l in capture_layers:
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or not 1 <= l <= n:
            raise ModelInputError(
                f"capture layer {l!r} is outside [1, {n}] (blocks run: {n}); "
                f"layers count blocks from 1, e.g. {max(1, n // 2)}"
            )
        layers.append(int(l))
    return tuple(sorted(set(layers))), int(n)


def _check_params(params: Params, cfg: ModelConfig):
    """Cheap shape check so a params/config mix-up fails with a clear message."""
    expected = {
        "embedding": (cfg.vocab_size, cfg.d_model),
        "layers/attn/q": (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim),
        "layers/attn/k": (cfg.num_layers, cfg.d_model, cfg.num_kv_heads, cfg.head_dim),
        "layers/mlp/gate": (cfg.num_layers, cfg.d_model, cfg.mlp_dim),
    }
    for name, shape in expected.items():
        node = params
        for key in name.split("/"):
            node = node[key] if isinstance(node, dict) and key in node else None
        if node is None or tuple(node.shape) != shape:
            got = None if node is None else tuple(node.shape)
            raise ModelInputError(
                f"param {name} has shape {got} but config {cfg.name!r} needs "
                f"{shape}; load params and config from the same checkpoint"
            )


def forward(
    params: Params,
    tokens_BxT: jax.Array,
    cfg: ModelConfig,
    capture_layers: Sequence[int] = (),
    num_blocks: int | None = None,
) -> ForwardOutput:
    """Runs the decoder (jit-able; `cfg`, `capture_layers`, `num_blocks` are static).

    Args:
        params: tree from `init_params` / `model_io.load_model`.
        tokens_BxT: int token ids, values in [0, V) (not checked inside jit).
        cfg: model config.
        capture_layers: 1-based block counts l whose residual stream (after l
            blocks, before any final norm) is returned in `captured`.
        num_blocks: run only the first n blocks (None: all L). With n < L
            there is no final norm and `final_hidden_BxTxD` is None.

    Returns:
        ForwardOutput. Logits are `unembed(params, out.final_hidden_BxTxD, cfg)`.

    Params may be pre-cast to the compute dtype (e.g. bf16 for inference);
    the in-layer casts are then no-ops.

    Raises:
        ModelInputError: tokens not [B, T], a layer outside [1, num_blocks], or
            params whose shapes do not match `cfg`.
    """
    if getattr(tokens_BxT, "ndim", None) != 2:
        raise ModelInputError(
            f"tokens must be a [batch, seq] integer array, got shape "
            f"{getattr(tokens_BxT, 'shape', None)}; add a batch axis"
        )
    capture, n = _check_layers(cfg, capture_layers, num_blocks)
    _check_params(params, cfg)
    dtype = jnp.dtype(cfg.dtype)
    x_BxTxD = _constrain(embed(params, tokens_BxT, cfg))
    positions_T = jnp.arange(tokens_BxT.shape[1])
    ropes = {
        "local": rope_tables(positions_T, cfg.head_dim, cfg.rope_local_base, 1.0, dtype),
        "global": rope_tables(
            positions_T, cfg.head_dim, cfg.rope_global_base, cfg.rope_global_scale, dtype
        ),
    }
    captured = {}
    start = 0
    for stop in sorted(set(capture) | {n}):
        x_BxTxD = _run_blocks(params["layers"], x_BxTxD, start, stop, ropes, cfg)
        if stop in capture:
            captured[stop] = x_BxTxD
        start = stop
    final_BxTxD = None
    if n == cfg.num_layers:
        final_BxTxD = rms_norm(x_BxTxD, params["final_norm"], cfg.rms_norm_eps)
    return ForwardOutput(final_hidden_BxTxD=final_BxTxD, captured=captured)


def unembed(params: Params, hidden_BxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Tied-embedding logits [..., V] in the compute dtype (no soft-cap in Gemma 3)."""
    dtype = jnp.dtype(cfg.dtype)
    return jnp.einsum(
        "...d,vd->...v", hidden_BxTxD.astype(dtype), params["embedding"].astype(dtype)
    )
