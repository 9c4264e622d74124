"""The penalty of a KD objective's own optimum, from the stored top-k (numpy only).

A KD run minimises ``(1-α)·NLL + α·τ²·KL_topk``. Even a student that reaches
the exact minimiser of that loss is not the teacher when the KL term, as
computed on a truncated top-k, pulls away from the data (``tail="zero"``
rewards the student for putting no mass outside the stored ids). This module
measures that cost before anything trains: with the teacher standing in for
the data, the penalty is the NLL of the minimiser minus the teacher's NLL,
``KL(p_T ‖ q*)`` per position, in nats/token. Pure numpy (float64) so that
``python -m store stats`` and the trainer (which calls it) share it;
store/ never imports JAX.

Derivation (per position). Classes: the K stored ids plus one tail class. The
teacher's τ=1 probabilities are ``p_c`` (tail ``m = 1 − Σ_k p_k``). Model
assumption: the student copies the teacher's shape *inside* the tail (the
NLL term pulls it there, and KL_topk sees only the tail's total), so the
student is ``q`` over the K+1 classes, its tempered tail power sum is
``(Q/m)^t·S`` with ``t = 1/τ`` and ``S = Σ_tail p_v^t``, and the within-tail
terms cancel from the penalty, leaving ``Σ_c p_c log(p_c / q*_c)``.
Write ``q = softmax(z)``. Then, up to constants,

    NLL(z)   = −p·z + lse(z)
    KL(z)    = −t·w·z + lse_{c∈C'}(t·z_c + b_c)

where ``w`` are the teacher's weights in the KL and ``C'``, ``b`` say which
student classes normalise its tempered distribution:

    zero         w = softmax(log p_k / τ) on the ids, 0 on the tail; C' = all,
                 b_k = 0, b_tail = log S − t·log m (the gathered student
                 log-softmax is normalised over the full vocabulary);
    renormalize  w as for zero; C' = the ids (the student is renormalised on them);
    bucket       w = (p_k^t, S_teacher) / Z; C' = all, b as for zero.

``F(z) = (1-α)·NLL + α·τ²·KL`` is a sum of log-sum-exps and a linear term:
convex in z and invariant to z + c·1. Its gradient is
``(1-α)(softmax(z) − p) + ατ(r − w)`` with ``r = softmax_{C'}(t·z + b)`` and
its Hessian ``(1-α)(diag q − qqᵀ) + α(diag r − rrᵀ)``. We solve it with
damped Newton (Armijo backtracking, the shift direction pinned), in float64,
at most ``MAX_NEWTON_STEPS`` steps to a gradient below ``GRAD_TOL``; tests
check it against hand-derived closed forms. At τ = 1 and ``zero`` the closed
form is ``q_k = (1-α)p_k + α p_k/(1-m)``, ``Q = (1-α)m``, so the penalty is
``(1-m)·log 1/((1-α) + α/(1-m)) + m·log 1/(1-α)``. With ``bucket`` at τ = 1
and with ``renormalize`` both terms are minimised at q = p: penalty 0.

τ ≠ 1. ``S`` is not stored; the loss uses the estimate of
``trainer.training.losses`` (``tempered_tail_logmass`` here, the same formula). The
teacher side of ``bucket`` uses that estimate; the student side of ``zero``
and ``bucket`` depends on the true ``S``, which lies between the even and the
packed tail. ``penalty_nats`` takes the true S = the estimate (the warning uses it);
``penalty_max_nats`` the worst of the two bounds: what the estimate's error
could cost at most, reported beside it (the bounds are loose: ~3-4x apart
on a Zipf tail, where the estimate is within 10%).

Warning threshold: ``THRESHOLD_NATS`` = 0.02 nats/token, four times the
seed-to-seed spread of the CPU demo's held-out log-ppl (~0.005) and a
seventh of its measured KD gain (0.14 nats): a penalty above it eats a
visible share of what distillation can give. Other divergences than
forward_kl are modelled only where the penalty is exactly 0 (bucket at τ = 1,
renormalize); elsewhere the result says "not modelled" instead of a number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from store.errors import StoreInputError

if TYPE_CHECKING:  # annotations only: the penalty maths needs no open store
    from store.reader import StoreReader

THRESHOLD_NATS = 0.02
MAX_POSITIONS = 4096  # Sampled positions: a standard error of ~0.005 nats at most.
MAX_NEWTON_STEPS = 100
GRAD_TOL = 1e-10
TAILS = ("zero", "renormalize", "bucket")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_TINY = 1e-300


def tempered_tail_logmass(
    log_m: npt.ArrayLike, log_min_p: npt.ArrayLike, num_tail: npt.ArrayLike, tau: float
) -> np.ndarray:
    """log of the estimated ``Σ_tail p_v^{1/τ}`` (trainer.training.losses' formula, numpy).

    Geometric mean of the even tail ``n·(m/n)^t`` and the packed tail
    ``m·c^(t−1)``, ``c = min(p_min, m)``; −inf where ``num_tail == 0``.
    """
    bounds = tail_bounds_log(log_m, log_min_p, num_tail, tau)
    return 0.5 * (bounds[0] + bounds[1])


def tail_bounds_log(
    log_m: npt.ArrayLike, log_min_p: npt.ArrayLike, num_tail: npt.ArrayLike, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """(log S_even, log S_packed): the power sums of the two extreme tails."""
    t = 1.0 / tau
    log_m = np.asarray(log_m, np.float64)
    log_n = np.log(np.maximum(np.asarray(num_tail, np.float64), 1.0))
    log_c = np.minimum(np.asarray(log_min_p, np.float64), log_m)
    even = log_m + (t - 1.0) * (log_m - log_n)
    packed = log_m + (t - 1.0) * log_c
    none = np.asarray(num_tail) <= 0
    return np.where(none, -np.inf, even), np.where(none, -np.inf, packed)


def _lse(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.sum(np.exp(x - top), axis=axis)) + top[..., 0]


def _softmax(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(x - top)
    return e / np.maximum(e.sum(-1, keepdims=True), _TINY)


def solve_optimum(
    p_NxC: np.ndarray,
    w_NxC: np.ndarray,
    b_NxC: np.ndarray,
    active_NxC: np.ndarray,
    alpha: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimiser ``q*`` of ``(1-α)(−p·z + lse z) + ατ²(−t w·z + lse_{b>−inf}(t z + b))``.

    Args:
      p_NxC: data (teacher τ=1) probabilities per class.
      w_NxC: teacher weights in the KL term (sum 1 per row).
      b_NxC: offsets of the student's tempered classes (−inf: not in C').
      active_NxC: classes the student may hold mass on (others are pinned at 0).
      alpha: in [0, 1).
      tau: > 0.

    Returns:
      (q_NxC, max |gradient| per row): the optimum and its residual.
    """
    t = 1.0 / tau
    a_NxC = (1 - alpha) * p_NxC + alpha * tau * w_NxC
    neg = np.where(active_NxC, 0.0, -np.inf)
    z = np.where(active_NxC, np.log(np.maximum(p_NxC, 1e-12)), -np.inf)
    n_active = np.maximum(active_NxC.sum(-1, keepdims=True), 1)

    def value(z: np.ndarray) -> np.ndarray:
        kl_part = np.where(np.isfinite(b_NxC), t * z + b_NxC, -np.inf) + neg
        lin = np.sum(a_NxC * np.where(active_NxC, z, 0.0), -1)
        return -lin + (1 - alpha) * _lse(z) + alpha * tau**2 * _lse(kl_part)

    def grad_hess(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _softmax(z)
        r = _softmax(np.where(np.isfinite(b_NxC), t * z + b_NxC, -np.inf) + neg)
        g = (1 - alpha) * q + alpha * tau * r - a_NxC
        g = np.where(active_NxC, g, 0.0)
        h = (1 - alpha) * (
            np.einsum("nc,cd->ncd", q, np.eye(q.shape[-1])) - q[:, :, None] * q[:, None, :]
        ) + alpha * (
            np.einsum("nc,cd->ncd", r, np.eye(r.shape[-1])) - r[:, :, None] * r[:, None, :]
        )
        act = active_NxC[:, :, None] & active_NxC[:, None, :]
        # Pin the shift direction (F(z + c·1) = F(z)) and the inactive classes.
        h = np.where(act, h + 1.0 / n_active[:, :, None], 0.0)
        h = h + np.einsum("nc,cd->ncd", np.where(active_NxC, 1e-12, 1.0), np.eye(h.shape[-1]))
        return g, h

    for _ in range(MAX_NEWTON_STEPS):
        g, h = grad_hess(z)
        resid = np.max(np.abs(g), -1)
        if np.all(resid < GRAD_TOL):
            break
        step = -np.linalg.solve(h, g[..., None])[..., 0]
        step = np.where(active_NxC, step, 0.0)
        f0, slope = value(z), np.sum(g * step, -1)
        size = np.ones(z.shape[0])
        for _ in range(40):  # Armijo backtracking, per row.
            z_try = np.where(active_NxC, z + size[:, None] * step, -np.inf)
            bad = value(z_try) > f0 + 1e-4 * size * slope + 1e-15 * np.abs(f0)
            if not bad.any():
                break
            size = np.where(bad, size * 0.5, size)
        z = np.where(active_NxC, z + size[:, None] * step, -np.inf)
        z = z - np.max(z, -1, keepdims=True)
    g, _ = grad_hess(z)
    return _softmax(z), np.max(np.abs(g), -1)


def _classes(
    topk_logprobs_NxK: npt.ArrayLike,
    vocab_size: int,
    tau: float,
    tail: str,
    log_s_student: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """p, w, b, active over (K ids + tail) for one tail mode."""
    lp = np.asarray(topk_logprobs_NxK, np.float64)
    valid = np.isfinite(lp)
    p_k = np.where(valid, np.exp(np.where(valid, lp, 0.0)), 0.0)
    m = np.clip(1.0 - p_k.sum(-1), 0.0, 1.0)
    num_tail = vocab_size - valid.sum(-1)
    m = np.where(num_tail > 0, m, 0.0)
    log_m = np.log(np.maximum(m, _TINY))
    t = 1.0 / tau
    p = np.concatenate([p_k, m[:, None]], -1)
    active = np.concatenate([valid, (m > 0)[:, None]], -1)
    scaled = np.where(valid, lp * t, -np.inf)
    b_tail = np.where(m > 0, log_s_student - t * log_m, -np.inf)
    b = np.concatenate([np.where(valid, 0.0, -np.inf), b_tail[:, None]], -1)
    if tail == "bucket":
        log_s = np.where(
            m > 0, tempered_tail_logmass(log_m, _min_log(lp, valid), num_tail, tau), -np.inf
        )
        w = _softmax(np.concatenate([scaled, log_s[:, None]], -1))
    else:
        w = _softmax(np.concatenate([scaled, np.full((lp.shape[0], 1), -np.inf)], -1))
        if tail == "renormalize":
            b[:, -1] = -np.inf
    return p, w, b, active


def _min_log(lp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.min(np.where(valid, lp, np.inf), -1)


def position_penalties(
    topk_logprobs_NxK: npt.ArrayLike,
    vocab_size: int,
    alpha: float,
    tau: float,
    tail: str,
    divergence: str = "forward_kl",
) -> dict:
    """Per-position penalties ``KL(p_T ‖ q*)`` in nats.

    Args:
      topk_logprobs_NxK: stored teacher log-probs (τ=1, sorted, −inf in dropped slots).
      vocab_size: V.
      alpha, tau, tail, divergence: the loss settings.

    Returns:
      {"penalty": [N] (true tail = the estimate), "penalty_max": [N] (worst
      tail bound), "residual": max |gradient| over rows and solves} or, for a
      combination this model does not cover, {"not_modelled": reason}.

    Raises:
      StoreInputError: unknown tail/divergence or values out of range.
    """
    if tail not in TAILS:
        raise StoreInputError(f"unknown tail {tail!r}; use one of {list(TAILS)}")
    if divergence not in DIVERGENCES:
        raise StoreInputError(f"unknown divergence {divergence!r}; use one of {list(DIVERGENCES)}")
    if not (0.0 <= alpha <= 1.0) or not (tau > 0 and np.isfinite(tau)):
        raise StoreInputError(f"alpha={alpha} must be in [0, 1] and tau={tau} > 0")
    lp = np.asarray(topk_logprobs_NxK, np.float64)
    lp = lp[np.isfinite(lp).any(-1)]
    n = lp.shape[0]
    exact_zero = tail == "renormalize" or (tail == "bucket" and tau == 1.0) or alpha == 0.0
    if exact_zero:  # Both terms are minimised at q = p (module docstring).
        zeros = np.zeros(n)
        return {"penalty": zeros, "penalty_max": zeros, "residual": 0.0}
    if divergence != "forward_kl":
        return {
            "not_modelled": f"divergence={divergence} with tail={tail} at tau={tau:g} "
            "(the guard models forward_kl)"
        }
    if alpha == 1.0:
        return {"not_modelled": "alpha=1: no NLL term pins the student's tail"}
    valid = np.isfinite(lp)
    p_k_sum = np.where(valid, np.exp(np.where(valid, lp, 0.0)), 0.0).sum(-1)
    log_m = np.log(np.maximum(1.0 - p_k_sum, _TINY))
    num_tail = vocab_size - valid.sum(-1)
    lo, hi = tail_bounds_log(log_m, _min_log(lp, valid), num_tail, tau)
    results, resid = [], 0.0
    for log_s in [0.5 * (lo + hi)] if tau == 1.0 else [0.5 * (lo + hi), lo, hi]:
        p, w, b, active = _classes(lp, vocab_size, tau, tail, log_s)
        # Chunks keep the [n, C, C] Hessians at ~16 MB whatever k is.
        chunk = max(16, 2_000_000 // p.shape[1] ** 2)
        parts = [
            solve_optimum(
                p[i : i + chunk],
                w[i : i + chunk],
                b[i : i + chunk],
                active[i : i + chunk],
                alpha,
                tau,
            )
            for i in range(0, n, chunk)
        ]
        q = np.concatenate([x[0] for x in parts]) if parts else p
        res = np.concatenate([x[1] for x in parts]) if parts else np.zeros(0)
        kl = np.sum(
            np.where(p > 0, p * (np.log(np.maximum(p, _TINY)) - np.log(np.maximum(q, _TINY))), 0.0),
            -1,
        )
        results.append(np.maximum(kl, 0.0))  # A KL: < 0 only by float rounding (~1e-12).
        resid = max(resid, float(np.max(res)) if res.size else 0.0)
    return {"penalty": results[0], "penalty_max": np.max(np.stack(results), 0), "residual": resid}


def summarize(
    topk_logprobs_NxK: npt.ArrayLike,
    vocab_size: int,
    alpha: float,
    tau: float,
    tail: str,
    divergence: str = "forward_kl",
) -> dict:
    """The penalty summary ``store stats`` and the trainer print (nats/token)."""
    out: dict[str, Any] = {
        "alpha": float(alpha),
        "tau": float(tau),
        "tail": tail,
        "divergence": divergence,
        "threshold_nats": THRESHOLD_NATS,
    }
    per = position_penalties(topk_logprobs_NxK, vocab_size, alpha, tau, tail, divergence)
    if "not_modelled" in per:
        return {
            **out,
            "penalty_nats": None,
            "penalty_max_nats": None,
            "warn": False,
            "not_modelled": per["not_modelled"],
        }
    pen, pen_max = per["penalty"], per["penalty_max"]
    out.update(
        {
            "positions": int(pen.size),
            "penalty_nats": float(pen.mean()) if pen.size else 0.0,
            "penalty_max_nats": float(pen_max.mean()) if pen_max.size else 0.0,
            "solver_residual": per["residual"],
        }
    )
    out["warn"] = out["penalty_nats"] > THRESHOLD_NATS
    return out


def describe(summary: dict) -> str:
    """One line: the penalty, and the fix when it is above the threshold."""
    head = (
        f"objective penalty (alpha={summary['alpha']:g}, tau={summary['tau']:g}, "
        f"tail={summary['tail']})"
    )
    if summary.get("penalty_nats") is None:
        return f"{head}: not modelled: {summary['not_modelled']}"
    text = (
        f"{head}: {summary['penalty_nats']:.4f} nats/token (worst tail "
        f"{summary['penalty_max_nats']:.4f}) over {summary['positions']} positions"
    )
    # Printed before every KD run: say what the number means, in the line itself.
    meaning = (
        "the NLL a student minimising this loss perfectly would still lose to the "
        "teacher; near 0 the loss can reach the teacher"
    )
    if summary["warn"]:
        fix = "raise k (store), " + (
            "use loss.tail=bucket, " if summary["tail"] != "bucket" else "use tau=1, "
        )
        text = (
            f"WARNING: {text} exceeds {summary['threshold_nats']:g}: a perfect student of "
            f"this loss is that much worse than the teacher; {fix}or lower loss.alpha"
        )
        return text
    return f"{text} ({meaning})"


def sample_topk_logprobs(
    reader: StoreReader, sample_rows: int = 16, max_positions: int = MAX_POSITIONS, seed: int = 0
) -> np.ndarray:
    """``[N, K]`` stored log-probs of a seeded row sample (≤ max_positions positions)."""
    committed = reader.committed_rows()
    rng = np.random.default_rng(seed)
    n = min(int(sample_rows), committed.size)
    if reader.schema.k < 1 or n == 0:
        return np.zeros((0, max(reader.schema.k, 1)))
    rows = np.sort(rng.choice(committed, size=n, replace=False))
    lp = reader.read(rows, fields=("topk",))["topk_logprobs"]
    lp = np.asarray(lp, np.float64).reshape(-1, lp.shape[-1])
    if lp.shape[0] > max_positions:
        lp = lp[np.sort(rng.choice(lp.shape[0], size=max_positions, replace=False))]
    return lp
