"""The jitted teacher-signal extraction step.

One call maps a batch of token rows to the signal the store keeps per token:
the teacher's top-k next-token log-probabilities with their vocabulary ids,
and the residual stream after the requested blocks.

The de-embedding is the memory hazard: full logits of a [B, T] batch are
B·T·V floats (8 × 2048 × 32k fp32 = 2 GiB). The step therefore never forms
them at once: the final hidden states are cut along the sequence into tiles
of about `token_tile` tokens ([B, token_tile // B, D]), and `lax.map` runs
unembed → logsumexp → top-k per tile, so the live logits are at most
[token_tile, V]. Cutting positions rather than rows keeps the batch axis
whole, so a batch sharded over devices (data parallel) stays sharded.

Numerics. `lax.top_k` may run on the logits in the model's compute dtype:
the cast to float32 is exact and monotone, so ranking before or after the
cast gives the same ids, and on a GPU ranking bf16 is 2x faster (CPU: the
opposite, so the default picks by backend). The selected
values and the logsumexp are float32. Ties are broken towards the lower
vocabulary id (`lax.top_k`'s documented behaviour, tested in
tests/teacher_dump), so the output is deterministic.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from trainer.model import gemma3 as model, tiling
from trainer.model.errors import ConfigError, ModelInputError

# Tokens per de-embedding tile. 2048 × 32k fp32 logits = 256 MiB: large enough
# that the [tile, D] × [D, V] matmul runs at full speed on a GPU, small enough
# to leave HBM to the forward pass.
DEFAULT_TOKEN_TILE = 2048

ExtractFn = Callable[[Any, jax.Array], dict]


ExtractConfigError = ConfigError  # A bad extraction option (k, layers, top_p, token_tile)


TokenRangeError = ModelInputError  # Token ids outside [0, vocab_size)


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
        rank_float32: run top-k on float32 logits instead of the compute
            dtype (same ids either way; only speed differs).
    """
    k: int
    layers: tuple[int, ...]
    top_p: float | None
    token_tile: int
    hidden_dtype: Any
    rank_float32: bool


def resolve_spec(cfg, k: int = 128, layers: Sequence[int] | None = None,
                 top_p: float | None = None,
                 token_tile: int = DEFAULT_TOKEN_TILE,
                 hidden_dtype: Any = "float32",
                 rank_float32: bool | None = None) -> ExtractSpec:
    """Checks the extraction options against the model config.

    Args:
        cfg: the teacher's model config (num_layers, vocab_size).
        k: top-k size, 1 ≤ k ≤ vocab_size.
        layers: captured layers in [1, num_layers]; None → (num_layers // 2,).
            An empty sequence captures nothing.
        top_p: None, or a mass in (0, 1].
        token_tile: tokens per de-embedding tile, ≥ 1.
        hidden_dtype: dtype for the returned hidden states (None: compute dtype).
        rank_float32: None picks by backend: True on CPU, where XLA's bf16
            top-k is ~8x slower than fp32 (measured here), False elsewhere
            (on an H100 bf16 top-k runs 2x faster than fp32, DESIGN §7).

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
    if hidden_dtype is not None:
        try:
            hidden_dtype = jnp.dtype(hidden_dtype).name
        except TypeError:
            raise ExtractConfigError(
                f"hidden_dtype={hidden_dtype!r} is not a dtype: pass "
                f"'float32', 'bfloat16', or None for the compute dtype") from None
    return ExtractSpec(k=k, layers=layers,
                       top_p=None if top_p is None else float(top_p),
                       token_tile=token_tile, hidden_dtype=hidden_dtype,
                       rank_float32=(jax.default_backend() == "cpu"
                                     if rank_float32 is None
                                     else bool(rank_float32)))


def topk_logprobs(logits_XxV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k log-probabilities over the last axis of a tile of logits.

    Args:
        logits_XxV: logits [..., V] in any float dtype.
        k: number of entries kept.

    Returns:
        (topk_ids_XxK int32, topk_logprobs_XxK float32), sorted descending,
        ties resolved towards the lower id.
    """
    # Rank in the input dtype (exact w.r.t. fp32 ranking, see module doc);
    # normalise in fp32 so the stored log-probs carry fp32 precision.
    vals_XxK, ids_XxK = jax.lax.top_k(logits_XxV, k)
    lse_X = jax.nn.logsumexp(logits_XxV.astype(jnp.float32), axis=-1)
    logprobs_XxK = vals_XxK.astype(jnp.float32) - lse_X[..., None]
    return ids_XxK.astype(jnp.int32), logprobs_XxK


def truncate_top_p(topk_ids_XxK: jax.Array, topk_logprobs_XxK: jax.Array,
                   top_p: float) -> tuple[jax.Array, jax.Array]:
    """Keeps the shortest sorted prefix whose probability mass reaches top_p.

    Slot j is kept iff the mass of slots 0..j-1 is still below top_p, so slot
    0 is always kept. Dropped slots get logprob -inf and id 0 (the store's
    convention for an absent entry).

    Args:
        topk_ids_XxK: ids sorted by descending log-prob (last axis).
        topk_logprobs_XxK: matching float32 log-probs.
        top_p: target mass in (0, 1].

    Returns:
        (ids, logprobs) of the same shapes.
    """
    probs_XxK = jnp.exp(topk_logprobs_XxK)
    mass_before_XxK = jnp.cumsum(probs_XxK, axis=-1) - probs_XxK
    keep_XxK = mass_before_XxK < top_p
    ids = jnp.where(keep_XxK, topk_ids_XxK, 0)
    logprobs = jnp.where(keep_XxK, topk_logprobs_XxK, -jnp.inf)
    return ids, logprobs


def tiled_topk(params, hidden_BxTxD: jax.Array, cfg, k: int,
               token_tile: int, rank_float32: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    """Unembeds and takes the top-k, about `token_tile` tokens at a time.

    Args:
        params: model params (the tied embedding is read via model.unembed).
        hidden_BxTxD: final (normed) hidden states.
        cfg: model config.
        k: top-k size.
        token_tile: tokens per tile.
        rank_float32: cast the logits to float32 before the top-k.

    Returns:
        (topk_ids_BxTxK int32, topk_logprobs_BxTxK float32).
    """
    def one_tile(h_BxtxD):
        logits_BxtxV = model.unembed(params, h_BxtxD, cfg)
        if rank_float32:
            logits_BxtxV = logits_BxtxV.astype(jnp.float32)
        return topk_logprobs(logits_BxtxV, k)

    return tiling.map_token_tiles(one_tile, hidden_BxTxD, token_tile)


def extract_signal(params, tokens_BxT: jax.Array, cfg,
                   spec: ExtractSpec) -> dict:
    """Un-jitted extraction (see make_extract_fn for the contract)."""
    out = model.forward(params, tokens_BxT, cfg, capture_layers=spec.layers)
    ids_BxTxK, logprobs_BxTxK = tiled_topk(
        params, out.final_hidden_BxTxD, cfg, spec.k, spec.token_tile,
        spec.rank_float32)
    if spec.top_p is not None:
        ids_BxTxK, logprobs_BxTxK = truncate_top_p(ids_BxTxK, logprobs_BxTxK,
                                                   spec.top_p)
    hidden = {}
    for l in spec.layers:
        h_BxTxD = out.captured[l]
        if spec.hidden_dtype is not None:
            h_BxTxD = h_BxTxD.astype(spec.hidden_dtype)
        hidden[l] = h_BxTxD
    return {"topk_ids": ids_BxTxK, "topk_logprobs": logprobs_BxTxK,
            "hidden": hidden}


def make_extract_fn(cfg, k: int = 128, layers: Sequence[int] | None = None,
                    top_p: float | None = None,
                    token_tile: int = DEFAULT_TOKEN_TILE,
                    hidden_dtype: Any = "float32",
                    rank_float32: bool | None = None) -> ExtractFn:
    """Builds the jitted extraction step for a teacher config.

    Args:
        cfg: the teacher's model config.
        k: top-k size (1 ≤ k ≤ V).
        layers: captured layers (1-based block counts); default (L // 2,).
        top_p: optional top-p truncation of the stored support.
        token_tile: tokens per de-embedding tile (bounds live logits memory).
        hidden_dtype: dtype of returned hidden states; None = compute dtype.
        rank_float32: top-k on fp32 logits; None = by backend (see
            resolve_spec). Ids and log-probs are the same either way.

    Returns:
        fn(params, tokens_BxT int32) -> {"topk_ids": int32[B,T,K],
        "topk_logprobs": float32[B,T,K], "hidden": {l: [B,T,D]}}, jitted.
        The token ids are not range-checked on device (XLA clamps gathers);
        callers check on host (see check_token_range).

    Raises:
        ExtractConfigError: on bad k, layers, top_p or token_tile.
    """
    spec = resolve_spec(cfg, k=k, layers=layers, top_p=top_p,
                        token_tile=token_tile, hidden_dtype=hidden_dtype,
                        rank_float32=rank_float32)
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

