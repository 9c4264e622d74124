"""The jitted teacher-signal extraction step.

One call maps a batch of token rows to the signal the store keeps per token:
the teacher's top-k next-token log-probabilities with their vocabulary ids,
the residual stream after the requested blocks and, optionally, the log-prob
of each realized next token (``token_logprob``, for on-policy rollouts:
store/rollout.py).

The de-embedding is the memory hazard: full logits of a [B, T] batch are
B·T·V floats (8 × 2048 × 32k fp32 = 2 GiB). The step therefore never forms
them at once: the final hidden states are cut along the sequence into tiles
of about `token_tile` tokens ([B, token_tile // B, D]), and `lax.map` runs
unembed → logsumexp → top-k (and the sampled draws, teacher_dump.sampled)
per tile, so the live logits are at most [token_tile, V]. Cutting positions rather than rows keeps the batch axis
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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from teacher_dump import sampled, topk
from trainer.model import gemma3 as model
from trainer.model import tiling
from trainer.model.errors import ConfigError, ModelInputError

# Tokens per de-embedding tile. 2048 × 32k fp32 logits = 256 MiB: large enough
# that the [tile, D] × [D, V] matmul runs at full speed on a GPU, small enough
# to leave HBM to the forward pass.
DEFAULT_TOKEN_TILE = 2048

# fn(params, tokens_BxT, rows_B=None): rows_B (global store rows, int32) keys
# the sampled draws and is required iff samples > 0.
ExtractFn = Callable[..., dict]


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
        samples: S draws per position from the full softmax (0: none;
            teacher_dump.sampled).
        topk_group: 0: lax.top_k over all V; g > 0: the exact two-stage
            top-k over groups of g ids (teacher_dump.topk; same result).
        token_logprob: also return the log-prob of each realized next token
            (``token_logprob`` float32 [B, T], store/rollout.py).
    """

    k: int
    layers: tuple[int, ...]
    top_p: float | None
    token_tile: int
    hidden_dtype: Any
    rank_float32: bool
    samples: int = 0
    topk_group: int = 0
    token_logprob: bool = False

    @property
    def logits(self) -> bool:
        """Whether any signal reads the teacher's logits (else only its first blocks run)."""
        return bool(self.k or self.samples or self.token_logprob)


def _check_samples(samples) -> int:
    if (
        isinstance(samples, bool)
        or not isinstance(samples, int)
        or not 0 <= samples <= sampled.MAX_SAMPLES
    ):
        raise ConfigError(
            f"samples={samples!r} is outside [0, {sampled.MAX_SAMPLES}]: pass the number "
            f"of draws per position (e.g. 12; counts are stored as uint8), or 0 for none"
        )
    return samples


def resolve_spec(
    cfg,
    k: int = 128,
    layers: Sequence[int] | None = None,
    top_p: float | None = None,
    token_tile: int = DEFAULT_TOKEN_TILE,
    hidden_dtype: Any = "float32",
    rank_float32: bool | None = None,
    samples: int = 0,
    topk_group: int | None = None,
    token_logprob: bool = False,
) -> ExtractSpec:
    """Checks the extraction options against the model config.

    Args:
        cfg: the teacher's model config (num_layers, vocab_size).
        k: top-k size, 1 ≤ k ≤ vocab_size (0 allowed with samples > 0, token_logprob, or
            `layers` named: activations alone, for which no unembedding runs).
        layers: captured layers in [1, num_layers]; None → (num_layers // 2,).
            An empty sequence captures nothing.
        top_p: None, or a mass in (0, 1].
        token_tile: tokens per de-embedding tile, ≥ 1.
        hidden_dtype: dtype for the returned hidden states (None: compute dtype).
        rank_float32: None picks by backend: True on CPU, where XLA's bf16
            top-k is ~8x slower than fp32 (measured here), False elsewhere
            (on an H100 bf16 top-k runs 2x faster than fp32, docs/DESIGN.md §7).
        samples: draws per position, 0 ≤ samples ≤ 255.
        topk_group: ids per group of the two-stage top-k (0: lax.top_k);
            None picks by backend and V (teacher_dump.topk.auto_group).
        token_logprob: also the log-prob of each realized next token.

    Returns:
        An ExtractSpec.

    Raises:
        ConfigError: on any option outside its range.
    """
    num_layers, vocab = int(cfg.num_layers), int(cfg.vocab_size)
    samples = _check_samples(samples)
    if not isinstance(token_logprob, bool):
        raise ConfigError(f"token_logprob={token_logprob!r} must be True or False")
    # k = 0 needs another signal: sampled draws, the realized tokens' log-probs, or
    # activations asked for by name (the default layer alone is not a reason to skip the logits).
    named_layers = bool(layers)
    if layers is None:
        layers = (max(num_layers // 2, 1),)
    layers = tuple(int(l) for l in layers)
    low = 0 if samples or token_logprob or named_layers else 1
    if isinstance(k, bool) or not isinstance(k, int) or not low <= k <= vocab:
        raise ConfigError(
            f"k={k!r} is outside [{low}, vocab_size={vocab}]: pass an integer k "
            f"between 1 and the teacher's vocabulary size (0 only with samples > 0 "
            f"or token_logprob, or with layers named: activations alone)"
        )
    if top_p is not None and k == 0:
        raise ConfigError("top_p truncates the top-k but k=0: pass k > 0 or drop top_p")
    for l in layers:
        if not 1 <= l <= num_layers:
            raise ConfigError(
                f"layer {l} is outside [1, {num_layers}] (layer l = residual "
                f"after l blocks): pass layers between 1 and num_layers"
            )
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {layers} contain duplicates: list each layer once")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ConfigError(
            f"top_p={top_p!r} is outside (0, 1]: pass a probability mass such "
            f"as 0.95, or None to keep all k slots"
        )
    if topk_group is None:
        topk_group = topk.auto_group(jax.default_backend(), vocab, k) if k else 0
    if (
        isinstance(topk_group, bool)
        or not isinstance(topk_group, int)
        or topk_group < 0
        or (topk_group and -(-vocab // topk_group) <= k)
    ):
        raise ConfigError(
            f"topk_group={topk_group!r} must be 0 (lax.top_k) or a group size g with more "
            f"than k={k} groups in vocab_size={vocab}: pass 0, None (auto) or a g "
            f"below {vocab // max(k, 1)}"
        )
    if not isinstance(token_tile, int) or token_tile < 1:
        raise ConfigError(
            f"token_tile={token_tile!r} must be a positive integer: pass e.g. {DEFAULT_TOKEN_TILE}"
        )
    if hidden_dtype is not None:
        try:
            hidden_dtype = jnp.dtype(hidden_dtype).name
        except TypeError:
            raise ConfigError(
                f"hidden_dtype={hidden_dtype!r} is not a dtype: pass "
                f"'float32', 'bfloat16', or None for the compute dtype"
            ) from None
    return ExtractSpec(
        k=k,
        layers=layers,
        top_p=None if top_p is None else float(top_p),
        token_tile=token_tile,
        hidden_dtype=hidden_dtype,
        rank_float32=(
            jax.default_backend() == "cpu" if rank_float32 is None else bool(rank_float32)
        ),
        samples=samples,
        topk_group=topk_group,
        token_logprob=token_logprob,
    )


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
    lse_X = jax.nn.logsumexp(logits_XxV.astype(jnp.float32), axis=-1)
    return _topk_given_lse(logits_XxV, lse_X, k)


def _topk_given_lse(logits_XxV, lse_X, k, group=0):
    if group:
        vals_XxK, ids_XxK = topk.grouped_top_k(logits_XxV, k, group)
    else:
        vals_XxK, ids_XxK = jax.lax.top_k(logits_XxV, k)
    logprobs_XxK = vals_XxK.astype(jnp.float32) - lse_X[..., None]
    return ids_XxK.astype(jnp.int32), logprobs_XxK


def truncate_top_p(
    topk_ids_XxK: jax.Array, topk_logprobs_XxK: jax.Array, top_p: float
) -> tuple[jax.Array, jax.Array]:
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


def tiled_logit_signal(
    params,
    hidden_BxTxD: jax.Array,
    cfg,
    k: int,
    token_tile: int,
    rank_float32: bool = False,
    samples: int = 0,
    rows_B: jax.Array | None = None,
    topk_group: int = 0,
    tokens_BxT: jax.Array | None = None,
) -> dict:
    """The top-k, sampled and realized-token signal, unembedding `token_tile` tokens at a time.

    One logsumexp per tile serves the top-k, the sampled and the realized
    token's log-probs; the realized token's logit is a gather from the tile's
    float32 logits, so nothing larger than the tile is formed.

    Args:
        params: model params (the tied embedding is read via model.unembed).
        hidden_BxTxD: final (normed) hidden states.
        cfg: model config.
        k: top-k size (0: no top-k).
        token_tile: tokens per tile.
        rank_float32: cast the logits to float32 before the top-k.
        samples: draws per position (0: none).
        rows_B: global store row of each batch row (required iff samples > 0).
        topk_group: 0 or the group size of the two-stage top-k.
        tokens_BxT: the input tokens: also return "token_logprob" float32
            [B, T], log p(tokens[:, t+1] | tokens[:, :t+1]) at position t
            (the last position 0; store/rollout.py). None: not computed.

    Returns:
        {"topk_ids", "topk_logprobs"} if k > 0, plus {"sampled_ids",
        "sampled_counts", "sampled_logprobs"} [B, T, S] if samples > 0, plus
        {"token_logprob"} [B, T] if tokens_BxT is given.
    """
    b, t = hidden_BxTxD.shape[:2]
    xs = {"h": hidden_BxTxD}
    if tokens_BxT is not None:
        # Position i predicts token i+1; the last position has no next token (0 here, then 0 out).
        next_BxT = jnp.concatenate(
            [tokens_BxT[:, 1:], jnp.zeros((b, 1), tokens_BxT.dtype)], axis=1
        ).astype(jnp.int32)
        xs["next"] = next_BxT
    if samples:
        xs["rows"] = jnp.broadcast_to(jnp.asarray(rows_B, jnp.int32)[:, None], (b, t))
        xs["positions"] = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))

    def one_tile(tile):
        logits_BxtxV = model.unembed(params, tile["h"], cfg)
        if rank_float32:
            logits_BxtxV = logits_BxtxV.astype(jnp.float32)
        logits32_BxtxV = logits_BxtxV.astype(jnp.float32)
        lse_Bxt = jax.nn.logsumexp(logits32_BxtxV, axis=-1)
        out = {}
        if k:
            out["topk_ids"], out["topk_logprobs"] = _topk_given_lse(
                logits_BxtxV, lse_Bxt, k, topk_group
            )
        if samples:
            out.update(
                sampled.sample_logprobs(
                    logits32_BxtxV, lse_Bxt, tile["rows"], tile["positions"], samples
                )
            )
        if "next" in tile:
            # The same float32 logit minus the same logsumexp as the top-k's: where the
            # realized token is in the top-k, the two log-probs are bitwise equal.
            logit_Bxt = jnp.take_along_axis(logits32_BxtxV, tile["next"][..., None], axis=-1)
            out["token_logprob"] = logit_Bxt[..., 0] - lse_Bxt
        return out

    out = tiling.map_token_tiles(one_tile, xs, token_tile)
    if tokens_BxT is not None:
        out["token_logprob"] = out["token_logprob"].at[:, -1].set(0.0)
    return out


def extract_signal(
    params, tokens_BxT: jax.Array, cfg, spec: ExtractSpec, rows_B: jax.Array | None = None
) -> dict:
    """Un-jitted extraction (see make_extract_fn for the contract)."""
    if spec.samples and rows_B is None:
        raise ConfigError(
            f"samples={spec.samples} draws are keyed by the global store row: pass "
            f"rows_B (the store row of each batch row) to the extraction step"
        )
    if not spec.logits:  # Activations only: the blocks up to the deepest layer, no unembed.
        out = model.forward(
            params, tokens_BxT, cfg, capture_layers=spec.layers, num_blocks=max(spec.layers)
        )
        signal = {}
    else:
        out = model.forward(params, tokens_BxT, cfg, capture_layers=spec.layers)
        signal = tiled_logit_signal(
            params,
            out.final_hidden_BxTxD,
            cfg,
            spec.k,
            spec.token_tile,
            spec.rank_float32,
            spec.samples,
            rows_B,
            spec.topk_group,
            tokens_BxT if spec.token_logprob else None,
        )
    if spec.top_p is not None:
        signal["topk_ids"], signal["topk_logprobs"] = truncate_top_p(
            signal["topk_ids"], signal["topk_logprobs"], spec.top_p
        )
    hidden = {}
    for l in spec.layers:
        h_BxTxD = out.captured[l]
        if spec.hidden_dtype is not None:
            h_BxTxD = h_BxTxD.astype(spec.hidden_dtype)
        hidden[l] = h_BxTxD
    return {**signal, "hidden": hidden}


def make_extract_fn(
    cfg,
    k: int = 128,
    layers: Sequence[int] | None = None,
    top_p: float | None = None,
    token_tile: int = DEFAULT_TOKEN_TILE,
    hidden_dtype: Any = "float32",
    rank_float32: bool | None = None,
    samples: int = 0,
    topk_group: int | None = None,
    token_logprob: bool = False,
) -> ExtractFn:
    """Builds the jitted extraction step for a teacher config.

    Args:
        cfg: the teacher's model config.
        k: top-k size (1 ≤ k ≤ V; 0 as resolve_spec allows).
        layers: captured layers (1-based block counts); default (L // 2,).
        top_p: optional top-p truncation of the stored support.
        token_tile: tokens per de-embedding tile (bounds live logits memory).
        hidden_dtype: dtype of returned hidden states; None = compute dtype.
        rank_float32: top-k on fp32 logits; None = by backend (see
            resolve_spec). Ids and log-probs are the same either way.
        samples: S draws per position from the full softmax (0: none).
        topk_group: two-stage top-k group size; 0 = lax.top_k, None = auto
            (resolve_spec). Ids and log-probs are the same either way.
        token_logprob: also "token_logprob" float32 [B,T], the log-prob of
            each realized next token (0 at the last position).

    Returns:
        fn(params, tokens_BxT int32, rows_B int32 | None = None) ->
        {"topk_ids": int32[B,T,K], "topk_logprobs": float32[B,T,K],
        "hidden": {l: [B,T,D]}}, jitted. k = 0 leaves out the topk keys;
        samples > 0 adds "sampled_ids" int32, "sampled_counts" uint8,
        "sampled_logprobs" float32 [B,T,S] (teacher_dump.sampled) and needs
        rows_B, the global store row of each batch row (padding rows: any).
        The token ids are not range-checked on device (XLA clamps gathers);
        callers check on host (see check_token_range).

    Raises:
        ConfigError: on bad k, layers, top_p, token_tile or samples.
    """
    spec = resolve_spec(
        cfg,
        k=k,
        layers=layers,
        top_p=top_p,
        token_tile=token_tile,
        hidden_dtype=hidden_dtype,
        rank_float32=rank_float32,
        samples=samples,
        topk_group=topk_group,
        token_logprob=token_logprob,
    )
    return _build_extract_fn(cfg, spec)


@functools.lru_cache(maxsize=32)
def _build_extract_fn(cfg, spec: ExtractSpec) -> ExtractFn:
    # Cached on (cfg, spec): a fresh jit closure would recompile the whole
    # teacher forward, e.g. for every worker thread or test that asks again.
    # No buffer donation: the only per-call input is the small int32 token
    # batch, whose buffer cannot back any output; params must stay resident.
    @jax.jit
    def extract(params, tokens_BxT, rows_B=None):
        return extract_signal(params, tokens_BxT, cfg, spec, rows_B)

    return extract


def check_token_range(tokens, vocab_size: int) -> None:
    """Host-side check that every token id is in [0, vocab_size).

    Args:
        tokens: integer numpy array of token ids (any shape).
        vocab_size: the teacher's vocabulary size.

    Raises:
        ModelInputError: if an id is negative or ≥ vocab_size.
    """
    if tokens.size == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        raise ModelInputError(
            f"token id {bad} is outside the teacher's vocabulary [0, "
            f"{vocab_size}): tokenize with the tokenizer the teacher was "
            f"trained with (same vocab_size)"
        )
