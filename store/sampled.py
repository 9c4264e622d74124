"""Sampled teacher logits: the ``sampled/*`` array family (every profile).

A store with ``schema.samples = S > 0`` keeps, per position, the teacher's S
draws from its full softmax at tau=1, as the distinct ids with their counts
(Sparse Logit Sampling, arXiv 2503.16870):

  * ``sampled/ids``      [N,T,S] the distinct drawn ids, ascending, empty slots
    last holding id 0 (exact: uint16 / int32 like ``topk/ids``; compact and lean
    pack them, see store/bitpack.py);
  * ``sampled/counts``   uint8 [N,T,S] how many of the S draws gave that id;
    they sum to S; 0 marks an empty slot;
  * ``sampled/logprobs`` float16 [N,T,S] the teacher log-prob of that id at
    tau=1 (same logsumexp as top-k), -inf in empty slots.

``counts / S`` are unbiased weights: sum_s (counts_s / S) f(id_s) estimates
E_p[f] for any f, so the KD term sum_s w_s (lp_s - log q(id_s)) is an unbiased
estimate of forward KL(p || q) and of its gradient. The draws themselves are
made on the device by teacher_dump; this module only checks, encodes and
decodes them, in numpy and in jnp (``encode_jnp`` / ``decode_jnp`` take the
JAX side as an argument, as store/topk_codecs.py's twins: byte- and
bit-identical to the numpy codec).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from store import bitpack, errors
from store.layout import ArraySpec

if TYPE_CHECKING:  # profiles imports this module
    from store.profiles import Profile

IDS, COUNTS, LOGPROBS = "sampled/ids", "sampled/counts", "sampled/logprobs"
# Input log-probs may exceed 0 by float rounding of logit - logsumexp (as top-k).
LOGPROB_SLACK = 1e-3


def array_specs(profile: Profile, T: int, S: int, V: int) -> list[ArraySpec]:
    """The three stored arrays of a profile (ids as the profile stores ids; zstd if ``profile.sampled_zstd``)."""
    return [
        dataclasses.replace(profile.ids_spec(IDS, T, S, V, "sample"), zstd=profile.sampled_zstd),
        ArraySpec(COUNTS, (T, S), "uint8", ("pos", "sample"), zstd=profile.sampled_zstd),
        ArraySpec(LOGPROBS, (T, S), "float16", ("pos", "sample"), zstd=profile.sampled_zstd),
    ]


def contract_problem(
    ids: np.ndarray, counts: np.ndarray, logprobs: np.ndarray, S: int, V: int, slack: float = 0.0
) -> str | None:
    """What breaks the sampled contract (see the module docstring), or None.

    Args:
        ids, counts: integer [..., S]; logprobs: floating [..., S].
        S: draws per position; V: vocabulary size.
        slack: how far above 0 a log-prob may be (input rounding).
    """
    if not ids.size:
        return None
    if ids.min() < 0 or ids.max() >= V:
        return f"sampled ids outside [0, vocab_size={V}): range [{ids.min()}, {ids.max()}]"
    if counts.min() < 0 or counts.max() > S:
        return f"sampled counts outside [0, samples={S}]: range [{counts.min()}, {counts.max()}]"
    total = counts.sum(-1, dtype=np.int64)
    if (total != S).any():
        bad = np.unique(total[total != S])[:3].tolist()
        return f"sampled counts must sum to samples={S} at every position; found sums {bad}"
    used = counts > 0
    if (used[..., 1:] & ~used[..., :-1]).any():
        return "sampled empty slots (count 0) must come last; put the distinct ids first"
    if (ids[~used] != 0).any():
        return "sampled empty slots (count 0) must hold id 0"
    if (used[..., 1:] & (ids[..., 1:] <= ids[..., :-1])).any():
        return "sampled ids must be distinct and ascending among the used slots; merge repeated draws into counts"
    lp = np.asarray(logprobs, dtype=np.float32)
    if not np.isneginf(lp[~used]).all():
        return "sampled log-probs must be -inf in empty slots (count 0)"
    lp_used = lp[used]
    if not np.isfinite(lp_used).all() or (lp_used > slack).any():
        return "sampled log-probs of drawn ids must be finite log-probabilities (<= 0); store logit - logsumexp"
    return None


def check_inputs(
    rows: int,
    T: int,
    S: int,
    V: int,
    ids: npt.ArrayLike | None,
    counts: npt.ArrayLike | None,
    logprobs: npt.ArrayLike | None,
    check_array: Callable[[str, Any, tuple[int, ...], str], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates write_unit's sampled inputs; returns (ids, counts, float32 log-probs).

    ``check_array(name, x, shape, kind)`` is the writer's dtype/shape check.

    Raises:
        StoreInputError: one line naming the broken rule.
    """
    if ids is None or counts is None or logprobs is None:
        raise errors.StoreInputError(
            f"this store has samples={S}: pass sampled_ids, sampled_counts and sampled_logprobs"
        )
    ids = check_array("sampled_ids", ids, (rows, T, S), "integer")
    counts = check_array("sampled_counts", counts, (rows, T, S), "integer")
    lp = np.asarray(
        check_array("sampled_logprobs", logprobs, (rows, T, S), "floating"), dtype=np.float32
    )
    problem = contract_problem(ids, counts, lp, S, V, slack=LOGPROB_SLACK)
    if problem:
        raise errors.StoreInputError(f"{problem} (write_unit sampled_* inputs)")
    return ids, counts, lp


def encode(
    profile: Profile, ids: np.ndarray, counts: np.ndarray, logprobs: np.ndarray, V: int
) -> dict[str, np.ndarray]:
    """Stored arrays of checked inputs (deterministic)."""
    return {
        IDS: profile.encode_ids(ids, V),
        COUNTS: counts.astype(np.uint8),
        LOGPROBS: np.minimum(logprobs, 0).astype(np.float16),
    }


def decode(
    profile: Profile,
    stored: dict[str, np.ndarray],
    S: int,
    V: int,
    ids_dtype: npt.DTypeLike = np.int32,
    logprobs_dtype: npt.DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, counts uint8, logprobs) from the stored arrays (stored dtypes returned without a copy)."""
    return (
        profile.decode_ids(stored[IDS], S, V, ids_dtype),
        stored[COUNTS],
        stored[LOGPROBS].astype(logprobs_dtype, copy=False),
    )


def encode_jnp(
    ops: ModuleType, profile: Profile, ids: Any, counts: Any, logprobs: Any, V: int
) -> dict[str, Any]:
    """``encode`` in jnp (``ops``: teacher_dump.encode_ops, ``ops.jnp`` is jax.numpy), byte-identical."""
    jnp = ops.jnp
    return {
        IDS: profile.encode_ids_jnp(jnp, ids, V),
        COUNTS: counts.astype(jnp.uint8),
        LOGPROBS: jnp.minimum(logprobs.astype(jnp.float32), 0).astype(jnp.float16),
    }


def decode_jnp(
    jnp: ModuleType, stored: dict[str, Any], S: int, ids_bits: int
) -> tuple[Any, Any, Any]:
    """(int32 ids, int32 counts, float32 log-probs) [..., S] in jnp; ``ids_bits`` 0: unpacked ids."""
    return (
        bitpack.stored_ids_jnp(jnp, stored[IDS], S, ids_bits),
        stored[COUNTS].astype(jnp.int32),
        stored[LOGPROBS].astype(jnp.float32),
    )


def describe(profile: Profile, V: int) -> dict[str, str]:
    """Manifest ``encodings`` entries of the family."""
    return {
        IDS: profile.describe_ids(
            V, "the distinct drawn ids of a position, ascending; empty slots last, id 0"
        ),
        COUNTS: "uint8 draws per id; sum over the slot axis = schema.samples; 0 = empty slot; "
        "weight w = counts / samples gives unbiased estimates of E_p[f] (forward KL at tau=1)",
        LOGPROBS: "float16 teacher log-prob at tau=1 of that id; -inf in empty slots",
    }
