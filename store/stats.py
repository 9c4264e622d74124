"""Content statistics on a row sample: what the teacher signal looks like.

* top-k mass coverage ``sum(exp(logprob))`` per token: how much of the
  teacher distribution k keeps (1 - coverage is the tail the KD loss never sees);
* teacher entropy over the stored support (softmax of the log-probs);
* sampled draws (samples > 0): distinct ids per position, and the teacher
  probability mass of those ids (how much of the distribution S draws reach);
* per captured layer: per-token L2 norm, mean squared magnitude, and the
  channels with the largest mean |x| (the outlier channels the compact
  profile keeps apart);
* rollout stores (store/rollout.py): the fraction of completion tokens
  (``loss_mask``), and the teacher's log-prob of the realized tokens
  (``token_logprob``) over all scored positions and over completion tokens
  only (minus its mean: the teacher's NLL of the student's own samples);
* given KD settings (α, τ, tail), the penalty of the objective's own optimum
  (``store.objective_penalty``) on the sampled positions.
"""

from typing import Any

import numpy as np

from store import errors, objective_penalty, profiles, rollout
from store.reader import StoreReader
from store.schema import StoreSchema

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return {"n": 0}
    out = {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))})
    return out


def store_stats(
    url: str,
    sample_rows: int = 32,
    seed: int = 0,
    allow_partial: bool = True,
    loss: dict | None = None,
) -> dict:
    """Statistics over a random sample of committed rows.

    Args:
        url: the store's path or URL.
        sample_rows: rows to sample (all committed rows if fewer).
        seed: sampling seed (the same seed samples the same rows).
        allow_partial: sample the committed rows of an unfinished store.
        loss: {"alpha", "tau", "tail", "divergence"} to also report the KD
            objective penalty (needs a store with top-k).

    Returns:
        {"url", "rows_sampled", "tokens": {...}, "topk": {"coverage", "entropy", "tail_mass_mean"},
         "sampled": {"samples", "distinct_ids", "mass_of_drawn_ids"} (when samples > 0),
         "loss_mask": {"completion_fraction"} (when stored),
         "token_logprob": {"all", "completion"} summaries (when stored; "completion" with a mask),
         "hidden": {layer: {"token_l2_norm", "mean_square", "top_channels"}},
         "objective_penalty": {...} (when `loss` is given)}.
    """
    reader = StoreReader(url, allow_partial=allow_partial)
    committed = reader.committed_rows()
    rng = np.random.default_rng(seed)
    n = min(int(sample_rows), committed.size)
    rows = np.sort(rng.choice(committed, size=n, replace=False)) if n else committed[:0]
    out = {
        "url": reader.url,
        "rows_sampled": int(n),
        "tokens_sampled": int(n * reader.schema.seq_len),
    }
    pad_id = reader.schema.tokenizer.get("pad_id")
    lps = []
    for start in range(0, n, 8):  # Small batches keep memory flat at full geometry.
        batch = reader.read(rows[start : start + 8])
        _accumulate(out, batch, reader.schema, pad_id)
        if loss is not None and reader.schema.k:
            lps.append(batch["topk_logprobs"].reshape(-1, reader.schema.k))
    out = _finish(out, reader.schema)
    if loss is not None:
        if not reader.schema.k:
            raise errors.StoreInputError(
                f"store {reader.url} has k=0 (tokens only): no objective penalty to compute; "
                "drop --alpha/--tau/--tail"
            )
        lp = np.concatenate(lps) if lps else np.zeros((0, reader.schema.k))
        if lp.shape[0] > objective_penalty.MAX_POSITIONS:
            lp = lp[
                np.sort(rng.choice(lp.shape[0], objective_penalty.MAX_POSITIONS, replace=False))
            ]
        out["objective_penalty"] = objective_penalty.summarize(
            lp,
            reader.schema.vocab_size,
            loss["alpha"],
            loss["tau"],
            loss["tail"],
            loss["divergence"],
        )
    return out


def _accumulate(
    out: dict[str, Any], batch: dict[str, np.ndarray], schema: StoreSchema, pad_id: int | None
) -> None:
    acc = out.setdefault("_acc", _empty_acc())
    if pad_id is not None:
        acc["pad"].append(float((batch["tokens"] == pad_id).mean()))
    if schema.loss_mask:
        acc["mask"].append(batch[rollout.LOSS_MASK].ravel())
    if schema.token_logprob:
        # Position t scores token t+1: the last position scores nothing; the mask weighs t+1.
        lp = batch[rollout.TOKEN_LOGPROB][:, :-1]
        acc["token_lp"].append(lp.ravel())
        if schema.loss_mask:
            acc["token_lp_completion"].append(lp[batch[rollout.LOSS_MASK][:, 1:] == 1])
    if schema.k:
        lp = batch["topk_logprobs"].astype(np.float64)
        p = np.exp(lp)  # exp(-inf) = 0: dropped slots add no mass
        mass = p.sum(-1)
        acc["coverage"].append(mass.ravel())
        q = p / np.maximum(mass, 1e-300)[..., None]
        logq = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
        acc["entropy"].append(-(q * logq).sum(-1).ravel())
    if schema.samples:
        acc["distinct"].append((batch["sampled_counts"] > 0).sum(-1).ravel())
        acc["drawn_mass"].append(
            np.exp(batch["sampled_logprobs"].astype(np.float64)).sum(-1).ravel()
        )
    for layer in schema.hidden_layers:
        x = batch[profiles.hidden_name(layer)].astype(np.float64)
        h = acc["hidden"].setdefault(layer, {"norm": [], "sq_sum": 0.0, "count": 0, "abs_sum": 0.0})
        h["norm"].append(np.sqrt((x * x).sum(-1)).ravel())
        h["sq_sum"] += float((x * x).sum())
        h["count"] += x.size
        h["abs_sum"] = h["abs_sum"] + np.abs(x).reshape(-1, x.shape[-1]).sum(0)


def _empty_acc() -> dict[str, Any]:
    return {
        "coverage": [],
        "entropy": [],
        "pad": [],
        "hidden": {},
        "distinct": [],
        "drawn_mass": [],
        "mask": [],
        "token_lp": [],
        "token_lp_completion": [],
    }


def _finish(out: dict[str, Any], schema: StoreSchema) -> dict[str, Any]:
    acc = out.pop("_acc", _empty_acc())
    out["tokens"] = {"pad_fraction": float(np.mean(acc["pad"])) if acc["pad"] else None}
    cat = lambda key: np.concatenate(acc[key]) if acc[key] else np.zeros(0)
    if schema.loss_mask:
        mask = cat("mask")
        out["loss_mask"] = {"completion_fraction": float(mask.mean()) if mask.size else None}
    if schema.token_logprob:
        out["token_logprob"] = {"all": _summary(cat("token_lp"))}
        if schema.loss_mask:
            out["token_logprob"]["completion"] = _summary(cat("token_lp_completion"))
    if schema.k:
        cov = np.concatenate(acc["coverage"]) if acc["coverage"] else np.zeros(0)
        ent = np.concatenate(acc["entropy"]) if acc["entropy"] else np.zeros(0)
        out["topk"] = {
            "k": schema.k,
            "coverage": _summary(cov),
            "entropy_nats": _summary(ent),
            "tail_mass_mean": float(1 - cov.mean()) if cov.size else None,
        }
    if schema.samples:
        out["sampled"] = {
            "samples": schema.samples,
            "distinct_ids": _summary(cat("distinct")),
            "mass_of_drawn_ids": _summary(cat("drawn_mass")),
        }
    out["hidden"] = {}
    for layer in schema.hidden_layers:
        h = acc["hidden"].get(layer)
        if h is None:
            out["hidden"][str(layer)] = {"n": 0}
            continue
        tokens = h["count"] // schema.hidden_dim
        mean_abs = h["abs_sum"] / max(tokens, 1)
        top = np.argsort(-mean_abs)[:5]
        out["hidden"][str(layer)] = {
            "token_l2_norm": _summary(np.concatenate(h["norm"])),
            "mean_square": h["sq_sum"] / max(h["count"], 1),
            "top_channels": [{"channel": int(c), "mean_abs": float(mean_abs[c])} for c in top],
            "median_channel_mean_abs": float(np.median(mean_abs)),
        }
    return out
