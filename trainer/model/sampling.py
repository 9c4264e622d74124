"""Next-token sampling: temperature, top-k, top-p, greedy; per-row keys independent of the batch.

Keys: the draw of the token at position `t` of store row `r` uses
`fold_in(fold_in(key(seed), r), t)` -- never the row's index in its batch,
so a row's rollout is the same in any batch, at any batch index, with any
neighbours (tests/model/test_model_generate.py moves rows to check it).

Order of the filters (as Hugging Face's `generate`): logits / temperature,
then top-k, then top-p over what top-k kept. Ties at a cut are kept (a
support can be a little larger than k). Temperature 0 is greedy: the argmax
of the raw logits, and top-k / top-p are then irrelevant.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from trainer.model.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How each next token is chosen (hashable: a static argument under jit)."""

    temperature: float = 1.0  # 0: greedy (argmax); else logits are divided by it.
    top_k: int = 0  # Keep the k most likely tokens; 0: no top-k cut.
    top_p: float = 1.0  # Keep the smallest most-likely set with mass >= p; 1: no cut.

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(
                f"temperature={t!r} must be a finite number >= 0 (0 is greedy); pass e.g. 1.0"
            )
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"top_k={k!r} must be an integer >= 0 (0: no top-k cut)")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ConfigError(f"top_p={p!r} must be in (0, 1] (1: no top-p cut)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def row_keys(seed: int, row_ids_B: jax.Array, positions_B: jax.Array) -> jax.Array:
    """Typed PRNG keys [B]: fold_in(fold_in(key(seed), row id), position) per row."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(base, r), t))(
        row_ids_B.astype(jnp.uint32), positions_B.astype(jnp.uint32)
    )


def filter_logits(logits_BxV: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """fp32 logits / temperature with tokens outside the top-k / top-p support at -inf.

    Args:
        logits_BxV: raw model logits.
        sampling: a non-greedy SamplingConfig.

    Returns:
        [B, V] fp32; softmax of it is the distribution `sample` draws from.
    """
    logits = logits_BxV.astype(jnp.float32) / jnp.float32(sampling.temperature)
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth_Bx1 = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits >= kth_Bx1, logits, -jnp.inf)
    if sampling.top_p < 1:
        sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        # The most likely token always stays (mass before it is 0 < p).
        kept_BxV = mass_before_BxV < sampling.top_p
        cut_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cut_Bx1, logits, -jnp.inf)
    return logits


def sample(logits_BxV: jax.Array, keys_B: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """int32 next tokens [B]: greedy at temperature 0, else one draw per row with its key."""
    if sampling.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits_BxV, sampling)
    draw = jax.vmap(lambda key, row: jax.random.categorical(key, row))
    return draw(keys_B, filtered).astype(jnp.int32)
