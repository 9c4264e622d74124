"""Batched, jitted generation with the KV cache: ragged prompts in, completions out.

    out = generate(params, prompts_BxP, prompt_lengths_B, row_ids_B, cfg,
                   max_new_tokens=N, sampling=SamplingConfig(temperature=1.0, top_p=0.9),
                   seed=0, eos_id=None, pad_id=0)
    out.completions_BxN, out.completion_lengths_B, out.logprobs_BxN

Prompts come **right-padded** with per-row lengths (row b's prompt is
prompts_BxP[b, :prompt_lengths_B[b]], as a store row's prefix is); they are
left-aligned inside (`trainer.model.kv_cache` says why). Shapes are fixed by
the call: P = the prompts' width, N = max_new_tokens; one compile per
(B, P, N, config, sampling). One prefill of the P-wide prompts, then N - 1
decode steps in a `lax.scan` (the N-th token is sampled, never fed).

A row's rollout depends only on (params, its prompt, its store row id, seed,
sampling): the key of the token at position t of row r is
`fold_in(fold_in(key(seed), r), t)` (`trainer.model.sampling`), and its
padding never reaches its numbers. With `eos_id`, a row stops at its first
EOS (kept, counted in its length); its later tokens are `pad_id` with
log-prob 0 (the batch still runs N steps: fixed shapes).

`logprobs_BxN` is the model's own log-probability at τ = 1 of each
generated token (log q(y_t | y_<t), before temperature and top-k/p), what
on-policy estimators such as log q(y) − log p(y) need.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import kv_cache
from trainer.model.errors import ModelInputError
from trainer.model.model_config import ModelConfig
from trainer.model.sampling import SamplingConfig, row_keys, sample

_MAX_ROW_ID = 2**32  # fold_in takes uint32 data


@flax.struct.dataclass
class Generation:
    """What `generate` returns (device arrays)."""

    completions_BxN: jax.Array  # int32 generated tokens; pad_id after a row's EOS
    completion_lengths_B: jax.Array  # int32 tokens generated per row (EOS included)
    logprobs_BxN: jax.Array  # fp32 log q(token) at τ = 1; 0 after EOS


def left_align(prompts_BxP: jax.Array, lengths_B: jax.Array, pad_id: int):
    """Right-padded prompts -> (left-padded prompts, left padding per row)."""
    P = prompts_BxP.shape[1]
    offsets_B = (P - lengths_B).astype(jnp.int32)
    source_BxP = jnp.arange(P, dtype=jnp.int32)[None, :] - offsets_B[:, None]
    moved = jnp.take_along_axis(prompts_BxP, jnp.clip(source_BxP, 0, P - 1), axis=1)
    return jnp.where(source_BxP >= 0, moved, pad_id).astype(jnp.int32), offsets_B


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_id", "pad_id")
)
def _generate(
    params,
    prompts_BxP,
    lengths_B,
    row_ids_B,
    seed,
    cfg: ModelConfig,
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_id: int | None,
    pad_id: int,
) -> Generation:
    P = prompts_BxP.shape[1]
    left_BxP, offsets_B = left_align(prompts_BxP, lengths_B, pad_id)
    logits_BxV, cache = kv_cache.prefill(params, left_BxP, offsets_B, cfg, P + max_new_tokens)

    def choose(logits_BxV, t, done_B):
        """Token t of each row's completion (its position: prompt length + t)."""
        keys_B = row_keys(seed, row_ids_B, lengths_B + t)
        token_B = sample(logits_BxV, keys_B, sampling)
        logprob_B = jnp.take_along_axis(
            jax.nn.log_softmax(logits_BxV, axis=-1), token_B[:, None], axis=1
        )[:, 0]
        emitted_B = jnp.where(done_B, pad_id, token_B)
        logprob_B = jnp.where(done_B, 0.0, logprob_B)
        if eos_id is not None:
            done_B = done_B | (token_B == eos_id)
        return token_B, emitted_B, logprob_B, done_B

    not_done_B = jnp.zeros(lengths_B.shape, bool)
    token_B, emitted_B, logprob_B, done_B = choose(logits_BxV, 0, not_done_B)

    def step(carry, t):
        cache, token_B, done_B = carry
        logits_BxV, cache = kv_cache.decode_step(params, cache, token_B, cfg)
        token_B, emitted_B, logprob_B, next_done_B = choose(logits_BxV, t, done_B)
        return (cache, token_B, next_done_B), (emitted_B, logprob_B, done_B)

    steps = jnp.arange(1, max_new_tokens, dtype=jnp.int32)
    _, (emitted_NxB, logprob_NxB, done_before_NxB) = jax.lax.scan(
        step, (cache, token_B, done_B), steps
    )
    completions = jnp.concatenate([emitted_B[:, None], emitted_NxB.T], axis=1)
    logprobs = jnp.concatenate([logprob_B[:, None], logprob_NxB.T], axis=1)
    # A token counts while its row had not finished before it (EOS itself counts).
    counted = jnp.concatenate([~not_done_B[:, None], ~done_before_NxB.T], axis=1)
    return Generation(
        completions_BxN=completions,
        completion_lengths_B=counted.sum(axis=1).astype(jnp.int32),
        logprobs_BxN=logprobs,
    )


def generate(
    params,
    prompts_BxP,
    prompt_lengths_B,
    row_ids_B,
    cfg: ModelConfig,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> Generation:
    """Generates `max_new_tokens` tokens after each row's prompt.

    Args:
        params: model params (`gemma3.init_params` tree; fp32 or pre-cast).
        prompts_BxP: int right-padded prompts (ids in [0, V)).
        prompt_lengths_B: int prompt length per row, in [1, P].
        row_ids_B: int store row of each prompt, in [0, 2^32): part of its keys.
        cfg: model config.
        max_new_tokens: N >= 1 tokens per row.
        sampling: temperature / top-k / top-p (temperature 0: greedy); None:
            SamplingConfig() (temperature 1, no cut).
        seed: the rollout seed, in [0, 2^32).
        eos_id: stop a row at this token (None: every row generates N).
        pad_id: what fills prompt padding and a row's tokens after its EOS.

    Returns:
        Generation (see the module docstring).

    Raises:
        ModelInputError: shapes, lengths, ids or N out of range.
    """
    prompts = np.asarray(prompts_BxP)
    lengths = np.asarray(prompt_lengths_B)
    rows = np.asarray(row_ids_B)
    if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer):
        raise ModelInputError(
            f"prompts must be a [batch, prompt_len] integer array, got {prompts.dtype} "
            f"{prompts.shape}; add a batch axis"
        )
    B, P = prompts.shape
    for name, a in (("prompt_lengths", lengths), ("row_ids", rows)):
        if a.shape != (B,) or not np.issubdtype(a.dtype, np.integer):
            raise ModelInputError(f"{name} must be {B} integers (one per prompt), got {a.shape}")
    if B == 0 or P == 0:
        raise ModelInputError(f"prompts of shape {prompts.shape} hold no tokens; pass >= 1 row")
    if lengths.min() < 1 or lengths.max() > P:
        raise ModelInputError(
            f"prompt lengths must be in [1, {P}] (the prompts' width), got "
            f"[{lengths.min()}, {lengths.max()}]; every row needs >= 1 prompt token"
        )
    if rows.min() < 0 or rows.max() >= _MAX_ROW_ID or not 0 <= int(seed) < _MAX_ROW_ID:
        raise ModelInputError(f"row ids and the seed must be in [0, 2^32), got seed={seed}")
    real = np.arange(P)[None, :] < lengths[:, None]
    if real.any() and (prompts[real].min() < 0 or prompts[real].max() >= cfg.vocab_size):
        raise ModelInputError(
            f"prompt token ids must be in [0, {cfg.vocab_size}) (the model's vocabulary); "
            f"tokenize with the model's tokenizer"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ModelInputError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    return _generate(
        params,
        jnp.asarray(prompts, jnp.int32),
        jnp.asarray(lengths, jnp.int32),
        jnp.asarray(rows.astype(np.uint32)),
        jnp.asarray(seed, jnp.uint32),
        cfg=cfg,
        max_new_tokens=max_new_tokens,
        sampling=SamplingConfig() if sampling is None else sampling,
        eos_id=None if eos_id is None else int(eos_id),
        pad_id=int(pad_id),
    )
