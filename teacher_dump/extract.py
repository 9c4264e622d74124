"""The jitted teacher-signal extraction step.

One call maps a batch of token rows to the signal the store keeps per token:
the teacher's top-k next-token log-probabilities with their vocabulary ids,
and the residual stream after the requested blocks.

The de-embedding is the memory hazard: full logits of a [B, T] batch are
B·T·V floats (8 × 2048 × 32k fp32 = 2 GiB). The step therefore never forms
them at once: the final hidden states are flattened to tokens and split into
tiles of `token_tile` tokens, and `lax.map` runs unembed → logsumexp → top-k
per tile, so the live logits are at most [token_tile, V].

Numerics. `lax.top_k` runs on the logits in the model's compute dtype: the
cast to float32 is exact and monotone, so ranking before or after the cast
gives the same ids, and ranking bf16 halves the sort traffic. The selected
values and the logsumexp are float32. Ties are broken towards the lower
vocabulary id (`lax.top_k`'s documented behaviour, tested in
tests/teacher_dump), so the output is deterministic.
"""
import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from trainer import model

# Tokens per de-embedding tile. 2048 × 32k fp32 logits = 256 MiB: large enough
# that the [tile, D] × [D, V] matmul runs at full speed on a GPU, small enough
# to leave HBM to the forward pass.
DEFAULT_TOKEN_TILE = 2048

ExtractFn = Callable[[Any, jax.Array], dict]


class ExtractConfigError(ValueError):
    """A bad extraction option (k, layers, top_p, token_tile)."""


class TokenRangeError(ValueError):
    """Token ids outside [0, vocab_size)."""


@dataclasses.dataclass(frozen=True)
class ExtractSpec:
    """Validated extraction options.

    Attributes:
        k: number of top log-probs kept per token.
        layers: 1-based block counts whose residual stream is captured.
        top_p: if set, the kept support is the shortest sorted prefix of the
            top-k whose probability mass reaches top_p; the rest of the k
            slots hold logprob -inf and id 0.
        token_tile: tokens per de-embedding tile.
        hidden_dtype: dtype of the returned hidden states; None keeps the
            model's compute dtype (halves device→host bytes under bf16).
    """
    k: int
    layers: tuple[int, ...]
    top_p: float | None
    token_tile: int
    hidden_dtype: Any


def resolve_spec(cfg, k: int = 128, layers: Sequence[int] | None = None,
                 top_p: float | None = None,
                 token_tile: int = DEFAULT_TOKEN_TILE,
                 hidden_dtype: Any = "float32") -> ExtractSpec:
    """Checks the extraction options against the model config.

    Args:
        cfg: the teacher's model config (num_layers, vocab_size).
        k: top-k size, 1 ≤ k ≤ vocab_size.
        layers: captured layers in [1, num_layers]; None → (num_layers // 2,).
            An empty sequence captures nothing.
        top_p: None, or a mass in (0, 1].
        token_tile: tokens per de-embedding tile, ≥ 1.
        hidden_dtype: dtype for the returned hidden states (None: compute dtype).

    Returns:
        An ExtractSpec.

    Raises:
        ExtractConfigError: on any option outside its range.
    """
    num_layers, vocab = int(cfg.num_layers), int(cfg.vocab_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ExtractConfigError(
            f"k={k!r} is outside [1, vocab_size={vocab}]: pass an integer k "
            f"between 1 and the teacher's vocabulary size")
    if layers is None:
        layers = (max(num_layers // 2, 1),)
    layers = tuple(int(l) for l in layers)
    for l in layers:
        if not 1 <= l <= num_layers:
            raise ExtractConfigError(
                f"layer {l} is outside [1, {num_layers}] (layer l = residual "
                f"after l blocks): pass layers between 1 and num_layers")
    if len(set(layers)) != len(layers):
        raise ExtractConfigError(
            f"layers {layers} contain duplicates: list each layer once")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ExtractConfigError(
            f"top_p={top_p!r} is outside (0, 1]: pass a probability mass such "
            f"as 0.95, or None to keep all k slots")
    if not isinstance(token_tile, int) or token_tile < 1:
        raise ExtractConfigError(
            f"token_tile={token_tile!r} must be a positive integer: pass e.g. "
            f"{DEFAULT_TOKEN_TILE}")
    return ExtractSpec(k=k, layers=layers,
                       top_p=None if top_p is None else float(top_p),
                       token_tile=token_tile, hidden_dtype=hidden_dtype)


def topk_logprobs(logits_NxV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k log-probabilities of one tile of logits.

    Args:
        logits_NxV: logits in any float dtype.
        k: number of entries kept.

    Returns:
        (topk_ids_NxK int32, topk_logprobs_NxK float32), sorted descending,
        ties resolved towards the lower id.
    """
    # Rank in the input dtype (exact w.r.t. fp32 ranking, see module doc);
    # normalise in fp32 so the stored log-probs carry fp32 precision.
    vals_NxK, ids_NxK = jax.lax.top_k(logits_NxV, k)
    lse_N = jax.nn.logsumexp(logits_NxV.astype(jnp.float32), axis=-1)
    logprobs_NxK = vals_NxK.astype(jnp.float32) - lse_N[:, None]
    return ids_NxK.astype(jnp.int32), logprobs_NxK


def truncate_top_p(topk_ids_NxK: jax.Array, topk_logprobs_NxK: jax.Array,
                   top_p: float) -> tuple[jax.Array, jax.Array]:
    """Keeps the shortest sorted prefix whose probability mass reaches top_p.

    Slot j is kept iff the mass of slots 0..j-1 is still below top_p, so slot
    0 is always kept. Dropped slots get logprob -inf and id 0 (the store's
    convention for an absent entry).

    Args:
        topk_ids_NxK: ids sorted by descending log-prob.
        topk_logprobs_NxK: matching float32 log-probs.
        top_p: target mass in (0, 1].

    Returns:
        (ids, logprobs) of the same shapes.
    """
    probs_NxK = jnp.exp(topk_logprobs_NxK)
    mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
    keep_NxK = mass_before_NxK < top_p
    ids = jnp.where(keep_NxK, topk_ids_NxK, 0)
    logprobs = jnp.where(keep_NxK, topk_logprobs_NxK, -jnp.inf)
    return ids, logprobs


def map_token_tiles(fn: Callable, x_NxD: jax.Array, token_tile: int):
    """Applies fn to consecutive [token_tile, D] tiles of x, sequentially.

    lax.map runs the tiles one after another, so whatever fn materialises per
    tile (e.g. [token_tile, V] logits) is live for one tile at a time.

    Args:
        fn: maps a [tile, D] array to a pytree of [tile, ...] arrays.
        x_NxD: the N token vectors; the last tile is zero-padded.
        token_tile: tokens per tile (clipped to N).

    Returns:
        fn's pytree with the tiles concatenated back to N rows.
    """
    n, d = x_NxD.shape
    tile = min(token_tile, n)
    num_tiles = -(-n // tile)
    pad = num_tiles * tile - n
    if pad:
        x_NxD = jnp.pad(x_NxD, ((0, pad), (0, 0)))
    out = jax.lax.map(fn, x_NxD.reshape(num_tiles, tile, d))
    return jax.tree_util.tree_map(
        lambda y: y.reshape((num_tiles * tile,) + y.shape[2:])[:n], out)


def tiled_topk(params, hidden_NxD: jax.Array, cfg, k: int,
               token_tile: int) -> tuple[jax.Array, jax.Array]:
    """Unembeds and takes the top-k, `token_tile` tokens at a time.

    Args:
        params: model params (the tied embedding is read via model.unembed).
        hidden_NxD: final (normed) hidden states of N tokens.
        cfg: model config.
        k: top-k size.
        token_tile: tokens per tile.

    Returns:
        (topk_ids_NxK int32, topk_logprobs_NxK float32).
    """
    def one_tile(h_TilexD):
        return topk_logprobs(model.unembed(params, h_TilexD, cfg), k)

    return map_token_tiles(one_tile, hidden_NxD, token_tile)


def extract_signal(params, tokens_BxT: jax.Array, cfg,
                   spec: ExtractSpec) -> dict:
    """Un-jitted extraction (see make_extract_fn for the contract)."""
    out = model.forward(params, tokens_BxT, cfg, capture_layers=spec.layers)
    hidden_BxTxD = out.final_hidden_BxTxD
    b, t, d = hidden_BxTxD.shape
    ids_NxK, logprobs_NxK = tiled_topk(
        params, hidden_BxTxD.reshape(b * t, d), cfg, spec.k, spec.token_tile)
    if spec.top_p is not None:
        ids_NxK, logprobs_NxK = truncate_top_p(ids_NxK, logprobs_NxK,
                                               spec.top_p)
    hidden = {}
    for l in spec.layers:
        h_BxTxD = out.captured[l]
        if spec.hidden_dtype is not None:
            h_BxTxD = h_BxTxD.astype(spec.hidden_dtype)
        hidden[l] = h_BxTxD
    return {
        "topk_ids": ids_NxK.reshape(b, t, spec.k),
        "topk_logprobs": logprobs_NxK.reshape(b, t, spec.k),
        "hidden": hidden,
    }


def make_extract_fn(cfg, k: int = 128, layers: Sequence[int] | None = None,
                    top_p: float | None = None,
                    token_tile: int = DEFAULT_TOKEN_TILE,
                    hidden_dtype: Any = "float32") -> ExtractFn:
    """Builds the jitted extraction step for a teacher config.

    Args:
        cfg: the teacher's model config.
        k: top-k size (1 ≤ k ≤ V).
        layers: captured layers (1-based block counts); default (L // 2,).
        top_p: optional top-p truncation of the stored support.
        token_tile: tokens per de-embedding tile (bounds live logits memory).
        hidden_dtype: dtype of returned hidden states; None = compute dtype.

    Returns:
        fn(params, tokens_BxT int32) -> {"topk_ids": int32[B,T,K],
        "topk_logprobs": float32[B,T,K], "hidden": {l: [B,T,D]}}, jitted.
        The token ids are not range-checked on device (XLA clamps gathers);
        callers check on host (see check_token_range).

    Raises:
        ExtractConfigError: on bad k, layers, top_p or token_tile.
    """
    spec = resolve_spec(cfg, k=k, layers=layers, top_p=top_p,
                        token_tile=token_tile, hidden_dtype=hidden_dtype)
    return _build_extract_fn(cfg, spec)


@functools.lru_cache(maxsize=32)
def _build_extract_fn(cfg, spec: ExtractSpec) -> ExtractFn:
    # Cached on (cfg, spec): a fresh jit closure would recompile the whole
    # teacher forward, e.g. for every worker thread or test that asks again.
    # No buffer donation: the only per-call input is the small int32 token
    # batch, whose buffer cannot back any output; params must stay resident.
    @jax.jit
    def extract(params, tokens_BxT):
        return extract_signal(params, tokens_BxT, cfg, spec)

    extract.spec = spec
    return extract


def check_token_range(tokens, vocab_size: int) -> None:
    """Host-side check that every token id is in [0, vocab_size).

    Args:
        tokens: integer numpy array of token ids (any shape).
        vocab_size: the teacher's vocabulary size.

    Raises:
        TokenRangeError: if an id is negative or ≥ vocab_size.
    """
    if tokens.size == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        raise TokenRangeError(
            f"token id {bad} is outside the teacher's vocabulary [0, "
            f"{vocab_size}): tokenize with the tokenizer the teacher was "
            f"trained with (same vocab_size)")


def signal_nbytes_per_token(outputs: Mapping[str, Any]) -> float:
    """Bytes per token of one extraction output (for throughput reports)."""
    leaves = jax.tree_util.tree_leaves(outputs)
    b, t = outputs["topk_ids"].shape[:2]
    return sum(x.size * x.dtype.itemsize for x in leaves) / (b * t)
