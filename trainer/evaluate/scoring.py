"""Batched, jitted log-likelihood scoring of token rows.

Everything the evaluation computes reduces to one primitive: for a row of
tokens `x[0..L]`, the log-probability of each target `x[j+1]` given `x[0..j]`
and whether it was the argmax, summed over a mask of scored targets. The
primitive covers (context, continuation) pairs (mask = the continuation),
sliding windows over long documents (mask = the targets not scored by an
earlier window) and packed store rows (mask = non-pad targets).

Rows are sorted by length, padded on the right to power-of-two buckets (capped
at the longest allowed length) and grouped into fixed-size batches, so the
jitted model step compiles once per bucket rather than once per shape.
Right padding is safe because the model is causal: padding never influences
an earlier position, and padded targets are masked out.

The model enters only through a `TokenScoreFn`, so the batching and
reduction logic can be tested against a toy function with known log-probs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import gemma3 as model
from trainer.model.errors import ConfigError
from trainer.model.model_config import ModelConfig
from trainer.training import losses, tiled_loss

MIN_BUCKET = 16


class TokenScoreFn(Protocol):
    def __call__(
        self, inputs_BxT: np.ndarray, targets_BxT: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (logprob_BxT float, is_argmax_BxT bool) of targets given inputs."""


class ModelScoreFn:
    """The model's jitted TokenScoreFn; remembers which shapes it has compiled.

    Logits are formed `token_tile` tokens at a time (lax.map over tiles), so
    memory holds [token_tile, V] logits rather than [B, T, V]: with a 262k
    Gemma vocabulary a full [8, 2048, V] fp32 block would be 17 GB.

    Args:
        params: model params (placed on the default device once).
        cfg: the model config.
        token_tile: tokens per logits tile.
    """

    def __init__(self, params, cfg: ModelConfig, token_tile: int = 1024):
        if token_tile < 1:
            raise ConfigError(f"token_tile {token_tile} must be >= 1; pass e.g. 1024")

        @jax.jit
        def score(params, inputs_BxT, targets_BxT):
            hidden_BxTxD = model.forward(params, inputs_BxT, cfg).final_hidden_BxTxD
            # The trainer's token-tiled logit path: never [B,T,V] fp32 at once.
            out = tiled_loss.tiled_logit_losses(
                hidden_BxTxD,
                model.embedding_table(params),
                _score_tile,
                {tiled_loss.TARGETS: targets_BxT},
                tile_tokens=token_tile,
            )
            return out["logprob"], out["is_argmax"] > 0.5

        self._score = score
        self._params = jax.device_put(params)
        self.seen_shapes: set[tuple[int, int]] = set()

    def __call__(self, inputs_BxT, targets_BxT):
        self.seen_shapes.add(tuple(inputs_BxT.shape))
        return self._score(self._params, inputs_BxT, targets_BxT)


def _score_tile(logits_NxV, inputs):
    """Per-token log p(target) (fp32 log-softmax) and whether target is the argmax."""
    targets_N = inputs[tiled_loss.TARGETS]
    return {
        "logprob": -losses.nll(logits_NxV, targets_N),
        "is_argmax": (jnp.argmax(logits_NxV, axis=-1) == targets_N).astype(jnp.float32),
    }


def make_token_score_fn(params, cfg: ModelConfig, token_tile: int = 1024) -> ModelScoreFn:
    """A jitted TokenScoreFn for `model.forward` + `model.unembed` with `params`."""
    return ModelScoreFn(params, cfg, token_tile)


@dataclasses.dataclass(frozen=True)
class Row:
    """Tokens x[0..L] and a bool[L] mask over targets x[1..L] that are scored."""

    tokens: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class RowScores:
    """Per row: summed log-prob (float64), scored-token count, all-argmax flag."""

    logprob_sum: np.ndarray
    num_tokens: np.ndarray
    all_greedy: np.ndarray
    input_tokens: int  # non-padding input tokens run through the model
    seconds: float  # wall time of all model calls
    warm_tokens: int = 0  # input tokens of batches whose shape was already compiled
    warm_seconds: float = 0.0  # their wall time: the steady-state throughput


@dataclasses.dataclass
class Throughput:
    """Model-call tokens and time, summed over `score_rows` calls."""

    tokens: int = 0
    seconds: float = 0.0
    warm_tokens: int = 0
    warm_seconds: float = 0.0

    def add(self, scores: RowScores) -> Throughput:
        self.tokens += scores.input_tokens
        self.seconds += scores.seconds
        self.warm_tokens += scores.warm_tokens
        self.warm_seconds += scores.warm_seconds
        return self

    def add_all(self, other: Throughput) -> Throughput:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    def to_dict(self) -> dict[str, float]:
        """tokens_per_s excludes batches that compiled a new shape (when known)."""
        wall = self.tokens / self.seconds if self.seconds else 0.0
        warm = self.warm_tokens / self.warm_seconds if self.warm_seconds else wall
        return {"scored_tokens": self.tokens, "tokens_per_s": warm, "wall_tokens_per_s": wall}


def bucket_length(length: int, max_len: int) -> int:
    """Smallest power of two >= length (at least MIN_BUCKET), capped at max_len."""
    bucket = MIN_BUCKET
    while bucket < length:
        bucket *= 2
    return max(min(bucket, max_len), length)


def score_rows(
    fn: TokenScoreFn,
    rows: Sequence[Row],
    batch_size: int,
    max_len: int,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RowScores:
    """Scores rows in length-bucketed batches of fixed shape.

    Args:
        fn: the TokenScoreFn.
        rows: rows with at most `max_len` targets each.
        batch_size: rows per model call (the last batch is padded with dummy rows).
        max_len: the largest sequence length fed to the model.
        pad_id: token id used for padding (any valid id; padded targets are masked).
        progress: called as progress(rows_done, rows_total) after each batch.

    Returns:
        RowScores in the order of `rows`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1; pass e.g. --batch-size 8")
    n = len(rows)
    logprob_sum = np.zeros(n, np.float64)
    num_tokens = np.zeros(n, np.int64)
    all_greedy = np.zeros(n, bool)
    input_tokens, warm_tokens, warm_seconds = 0, 0, 0.0
    start_time = time.perf_counter()
    seen = getattr(fn, "seen_shapes", None)  # None: cannot tell compiles apart
    lengths = np.array([len(r.tokens) - 1 for r in rows], np.int64)
    if n and (lengths.min() < 1 or lengths.max() > max_len):
        raise ConfigError(
            f"row lengths must be in [1, {max_len}] targets, got "
            f"[{lengths.min()}, {lengths.max()}]; truncate rows first"
        )
    # Longest first so each batch shares one bucket as often as possible.
    order = np.argsort(-lengths, kind="stable")
    done = 0
    for begin in range(0, n, batch_size):
        idx = order[begin : begin + batch_size]
        T = bucket_length(int(lengths[idx].max()), max_len)
        inputs_BxT = np.full((batch_size, T), pad_id, np.int32)
        targets_BxT = np.full((batch_size, T), pad_id, np.int32)
        mask_BxT = np.zeros((batch_size, T), bool)
        batch_tokens = 0
        for b, i in enumerate(idx):
            L = int(lengths[i])
            inputs_BxT[b, :L] = rows[i].tokens[:-1]
            targets_BxT[b, :L] = rows[i].tokens[1:]
            mask_BxT[b, :L] = rows[i].mask
            batch_tokens += L
        warm = seen is not None and inputs_BxT.shape in seen
        call_start = time.perf_counter()
        logprob_BxT, is_argmax_BxT = fn(inputs_BxT, targets_BxT)
        logprob_BxT = np.asarray(logprob_BxT, np.float64)  # Blocks until computed.
        is_argmax_BxT = np.asarray(is_argmax_BxT, bool)
        input_tokens += batch_tokens
        if warm:
            warm_tokens += batch_tokens
            warm_seconds += time.perf_counter() - call_start
        logprob_sum[idx] = np.where(mask_BxT, logprob_BxT, 0.0).sum(-1)[: len(idx)]
        num_tokens[idx] = mask_BxT.sum(-1)[: len(idx)]
        all_greedy[idx] = np.all(is_argmax_BxT | ~mask_BxT, axis=-1)[: len(idx)]
        done += len(idx)
        if progress:
            progress(done, n)
    return RowScores(
        logprob_sum,
        num_tokens,
        all_greedy,
        input_tokens,
        time.perf_counter() - start_time,
        warm_tokens,
        warm_seconds,
    )


def pair_row(context_ids: Sequence[int], continuation_ids: Sequence[int], max_len: int) -> Row:
    """A row scoring `continuation_ids` after `context_ids` (left-truncated to fit).

    The context should already start with BOS. When context + continuation
    exceed max_len + 1 tokens the oldest tokens are dropped (lm-eval-harness
    left truncation); a continuation longer than max_len keeps only its last
    max_len tokens scored.
    """
    if not continuation_ids:
        raise ConfigError(
            "empty continuation: nothing to score; check the task text and the tokenizer"
        )
    tokens = np.asarray(list(context_ids) + list(continuation_ids), np.int32)[-(max_len + 1) :]
    mask = np.zeros(len(tokens) - 1, bool)
    mask[-min(len(continuation_ids), max_len) :] = True
    return Row(tokens, mask)


def document_rows(ids: Sequence[int], max_len: int, stride: int) -> list[Row]:
    """Sliding windows that score every target of a document exactly once.

    Window w feeds up to `max_len` inputs starting at token w * stride and
    scores only targets not scored before, so after the first window every
    scored target sees at least `max_len - stride` tokens of context.

    Args:
        ids: the whole document, e.g. [BOS] + ids + [EOS].
        max_len: model inputs per window.
        stride: window step, 1 <= stride <= max_len.
    """
    if not 1 <= stride <= max_len:
        raise ConfigError(
            f"stride {stride} must be in [1, {max_len}]; pass e.g. --stride {max(max_len // 2, 1)}"
        )
    ids = np.asarray(ids, np.int32)
    last = len(ids) - 1  # index of the last target token
    rows, scored_to, begin = [], 0, 0
    while scored_to < last:
        end = min(begin + max_len, last)  # inputs ids[begin:end], targets ids[begin+1:end+1]
        target_pos = np.arange(begin + 1, end + 1)
        rows.append(Row(ids[begin : end + 1], target_pos > scored_to))
        scored_to = end
        begin += stride
    return rows


def tokens_rows(tokens_NxT: np.ndarray, pad_id: int | None) -> list[Row]:
    """Rows of a packed token store: all targets scored except `pad_id` ones."""
    rows = []
    for row in np.asarray(tokens_NxT, np.int32):
        mask = np.ones(len(row) - 1, bool) if pad_id is None or pad_id < 0 else row[1:] != pad_id
        rows.append(Row(row, mask))
    return rows
