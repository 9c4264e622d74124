"""FLOPs and parameter accounting for compute-matched distillation (docs/DESIGN.md §1).

Parameter counts come from the model definition itself: the param tree of
``jax.eval_shape(lambda: model.init_params(cfg, key))`` (shapes only, no
memory), split into the embedding table (top-level ``"embedding"``) and the
backbone (everything else, incl. norms). Per-token training costs
(forward + backward = 3 × forward for parametric layers; the teacher costs
~0 because its signal is stored)::

    C_data = 6·N + 6·d_S·V            nll
    C_KD   = C_data                   kd
    C_HLDC = C_KD + 6·N_reg(linear)   hldc
    C_HT   = 6·N_half + 6·N_reg(mlp)  ht (HLDF phase 1: first L_S/2 blocks, no de-embedding)
    C_OPD  = C_data                   opd (on-policy: the student's logits on its rollouts)
    C_OPRD = 6·N_half + 6·N_reg(lin)  oprd (hidden term only: blocks up to l_S, no de-embedding)
    C_OPRD+OPD = C_data + 6·N_reg     oprd_opd (OPRD with an OPD or off-policy logit term)

A live teacher (``teacher.checkpoint``) costs per token its forward
(``teacher_forward_flops``): 2·N_T + the attention forward, plus, where a
logit term reads it, its full-vocabulary unembed 2·d_T·V twice (the tiled
loss recomputes each tile's logits in the backward pass, teacher's included).
The paper does not charge it (its signal is computed once, offline); the
trainer adds it to the per-token costs only with ``teacher.charge_flops``.

``N_half`` is counted from the first ``L_S/2`` blocks of the tree (not N/2:
the final norm belongs to neither half). ``N_reg`` comes from
``regressors.regressor_param_count``. ``attention_flops_per_token`` is what
the 6N rule leaves out: the QKᵀ and AV products, causal (query i sees i+1
keys, or min(i+1, W) on a sliding-window layer), forward + backward.

Generation (rollouts, ``trainer.model.generate``) is forward only: per row a
prefill of the prompt, then one KV-cache decode step per further token, each
``2·N + 2·d_S·V`` plus its query's attention over the cached keys (the
context, capped at W on sliding-window layers): ``generation_flops``.

Budgets: ``OT_k = k · 20 · N`` tokens at ``C_data``; a method's steps =
budget / (its FLOPs/token × tokens per step), rounded down so the budget is
never exceeded; HLDF gives phase 1 (at C_HT) the fraction ``p1`` of the
budget and phase 2 (KD, at C_KD) the rest.

Stable signatures::

    param_counts(cfg, ht_blocks=None) -> {"backbone_params", "embedding_params",
                                          "total_params", "half_backbone_params", ...}
    model_flops(cfg, teacher_d_model=None, seq_len=None, ht_blocks=None,
                teacher_cfg=None, teacher_hidden_layer=None, charge_teacher=False,
                oprd_regressors=1) -> dict
        # {"student": param_counts, "regressor_params": {"hldc", "hldf"},
        #  "flops_per_token": {"nll", "kd", "hldc", "ht", "opd", "oprd", "oprd_opd"},
        #  "attention_flops_per_token", "teacher_forward": None | {...}, ...}
    teacher_forward_flops(teacher_cfg, seq_len=None, hidden_layer=None) -> dict
    attention_flops_per_token(cfg, seq_len, num_blocks=None) -> float
    decode_flops_per_token(cfg, context_len) -> float      # one KV-cache decode step, forward
    generation_flops(cfg, prompt_len, new_tokens) -> {"prefill", "decode", "total",
                                                      "per_generated_token", "decode_per_token"}
    ot_budget_flops(cfg_or_counts, k) -> float
    plan_steps(budget_flops, method, tokens_per_step, p1=None, counts=None, cfg=None,
               costs=None) -> StepPlan
        # iterating a StepPlan yields the steps per phase; .to_dict() for JSON

CLI: ``python -m trainer.flops --student NAME --teacher NAME --vocab V [--json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

# JAX (via the model and regressors) is imported where the counts are made,
# so that `python -m trainer.flops --help` and its argument errors are instant.
from trainer.model import model_config
from trainer.model.errors import ConfigError

CHINCHILLA_TOKENS_PER_PARAM = 20
# Per-phase cost keys of each method (HLDF: phase 1 = "ht", phase 2 = "kd").
METHOD_PHASES: dict[str, tuple[str, ...]] = {
    "nll": ("nll",),
    "kd": ("kd",),
    "hldc": ("hldc",),
    "hldf": ("ht", "kd"),
    "opd": ("opd",),
    "oprd": ("oprd",),  # "oprd_opd" when it has a logit term (plan_steps' costs).
}
# Which live-teacher forward each cost key needs: "full" (all blocks + unembed) or
# "hidden" (the blocks up to the compared layer); nll reads no teacher.
TEACHER_FORWARD = {
    "kd": "full",
    "hldc": "full",
    "ht": "hidden",
    "opd": "full",
    "oprd": "hidden",
    "oprd_opd": "full",
}


def _positive(value, name, integer=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be a number") from None
    if not (v > 0 and math.isfinite(v)) or (integer and v != int(v)):
        kind = "a positive integer" if integer else "a finite number > 0"
        raise ConfigError(f"{name}={value!r} must be {kind}")
    return int(v) if integer else v


def _size(leaf) -> int:
    return int(np.prod(leaf.shape))


def param_shapes(cfg: model_config.ModelConfig):
    """The model's param tree as ``jax.ShapeDtypeStruct``s (nothing allocated)."""
    import jax

    from trainer.model import gemma3 as model

    return jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))


def param_counts(cfg: model_config.ModelConfig, ht_blocks: int | None = None) -> dict[str, int]:
    """Embedding / backbone / total parameter counts from the real param tree.

    Args:
      cfg: a model config.
      ht_blocks: blocks run in HLDF phase 1 (default ``L // 2``).

    Returns:
      dict with backbone_params (no embedding), embedding_params,
      total_params, half_backbone_params (the first ``ht_blocks`` blocks),
      ht_blocks, num_layers, d_model, vocab_size.
    """
    import jax

    from trainer.model import gemma3 as model

    shapes = param_shapes(cfg)
    total = model.count_params(shapes, include_embedding=True)
    backbone = model.count_params(shapes, include_embedding=False)
    num_layers = cfg.num_layers
    ht_blocks = num_layers // 2 if ht_blocks is None else int(ht_blocks)
    if not 1 <= ht_blocks <= num_layers:
        raise ConfigError(
            f"ht_blocks={ht_blocks} must be in [1, {num_layers}] (blocks of the "
            "student run in HLDF phase 1)"
        )
    half = 0
    for leaf in jax.tree_util.tree_leaves(shapes["layers"]):
        # Blocks are stacked on a leading [L] axis; the first ht_blocks slices
        # are exactly the blocks phase 1 runs.
        if leaf.shape[0] != num_layers:
            raise ConfigError(
                f"layer param of shape {leaf.shape} is not stacked on [L={num_layers}]; "
                "trainer.model's param tree changed, update trainer.flops"
            )
        half += _size(leaf) // num_layers * ht_blocks
    return {
        "backbone_params": backbone,
        "embedding_params": total - backbone,
        "total_params": total,
        "half_backbone_params": half,
        "ht_blocks": ht_blocks,
        "num_layers": num_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
    }


def _keys_attended(seq_len: int, window: int | None) -> int:
    """Σ over query positions of the keys each attends to (causal, optional window)."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def attention_flops_per_token(
    cfg: model_config.ModelConfig, seq_len: int, num_blocks: int | None = None
) -> float:
    """Training FLOPs per token of the attention scores (QKᵀ and AV), left out by 6N.

    Per layer and key: 2·n_heads·head_dim multiply-adds for QKᵀ and as many
    for AV (×2 FLOPs each), ×3 for forward + backward. Keys per query are the
    causal count (a masked implementation that computes the full square does
    up to 2× more work), min(i+1, W) on sliding-window layers.

    Args:
      cfg: model config (sliding_window, global pattern from the config).
      seq_len: training sequence length T.
      num_blocks: only the first blocks (HLDF phase 1); default all.
    """
    seq_len = _positive(seq_len, "seq_len", integer=True)
    blocks = cfg.num_layers if num_blocks is None else int(num_blocks)
    per_key = 3 * 2 * 2 * cfg.num_heads * cfg.head_dim
    keys = sum(
        _keys_attended(seq_len, None if cfg.is_global(i) else cfg.sliding_window)
        for i in range(blocks)
    )
    return float(per_key * keys / seq_len)


def teacher_forward_flops(
    teacher_cfg: model_config.ModelConfig,
    seq_len: int | None = None,
    hidden_layer: int | None = None,
) -> dict[str, Any]:
    """Per-token FLOPs of a live teacher's forward in the train step (no backward: frozen).

    Args:
      teacher_cfg: the teacher's model config.
      seq_len: T, for the attention forward (None: left out).
      hidden_layer: the teacher layer a hidden-state term reads (None: L_T // 2).

    Returns:
      {"full": all blocks + attention + the unembed twice (forward, and its
      recomputation in the tiled loss's backward), "hidden": the blocks up to
      hidden_layer + their attention, "components": each part, "hidden_layer"}.
    """
    counts = param_counts(teacher_cfg, hidden_layer)
    blocks = counts["ht_blocks"]
    attn = attn_hidden = 0.0
    if seq_len is not None:
        # attention_flops_per_token counts forward + backward (3x the forward).
        attn = attention_flops_per_token(teacher_cfg, seq_len) / 3
        attn_hidden = attention_flops_per_token(teacher_cfg, seq_len, blocks) / 3
    unembed = 2.0 * teacher_cfg.d_model * teacher_cfg.vocab_size
    components = {
        "backbone": 2.0 * counts["backbone_params"],
        "attention": attn,
        "unembed": unembed,
        "unembed_recompute": unembed,
        "backbone_to_hidden_layer": 2.0 * counts["half_backbone_params"],
        "attention_to_hidden_layer": attn_hidden,
    }
    return {
        "full": components["backbone"] + attn + 2 * unembed,
        "hidden": components["backbone_to_hidden_layer"] + attn_hidden,
        "components": components,
        "hidden_layer": blocks,
    }


def decode_flops_per_token(cfg: model_config.ModelConfig, context_len: int) -> float:
    """Forward FLOPs of one KV-cache decode step per row (trainer.model.kv_cache).

    One token through the backbone (2·N) and the tied unembedding (2·d·V), and
    attention of its query over the cached keys: 2·n_heads·head_dim FLOPs for
    QKᵀ and as many for AV per key and layer, over ``context_len`` keys on a
    global layer and ``min(context_len, W)`` on a sliding-window one. Keys
    attended, as ``attention_flops_per_token`` counts them: the fixed-shape
    cache computes all of its slots and masks the unused ones (up to
    max_len − context_len more keys on a global layer).

    Args:
      cfg: model config.
      context_len: keys the token sees, itself included (its position + 1).
    """
    context_len = _positive(context_len, "context_len", integer=True)
    counts = param_counts(cfg)
    keys = sum(
        context_len if cfg.is_global(i) else min(context_len, cfg.sliding_window)
        for i in range(cfg.num_layers)
    )
    per_key = 2 * 2 * cfg.num_heads * cfg.head_dim
    return float(2 * counts["backbone_params"] + 2 * cfg.d_model * cfg.vocab_size + per_key * keys)


def generation_flops(
    cfg: model_config.ModelConfig, prompt_len: int, new_tokens: int
) -> dict[str, float]:
    """Forward FLOPs of generating ``new_tokens`` after a ``prompt_len`` prompt, per row.

    The prefill runs the prompt through the backbone (2·N per token, causal
    attention within the prompt) and unembeds its last position only; it
    yields the first new token. Each of the other ``new_tokens − 1`` tokens
    costs one decode step (``decode_flops_per_token``) at context
    prompt_len + 1, ..., prompt_len + new_tokens − 1.

    Returns:
      {"prefill", "decode", "total", "per_generated_token" (total / new_tokens),
      "decode_per_token" (decode / its steps; 0 when new_tokens = 1)}.
    """
    prompt_len = _positive(prompt_len, "prompt_len", integer=True)
    new_tokens = _positive(new_tokens, "new_tokens", integer=True)
    counts = param_counts(cfg)
    # attention_flops_per_token counts forward + backward (3x): the forward is a third.
    prompt_attention = attention_flops_per_token(cfg, prompt_len) * prompt_len / 3
    prefill = (
        2 * counts["backbone_params"] * prompt_len
        + prompt_attention
        + 2 * cfg.d_model * cfg.vocab_size
    )
    decode = sum(decode_flops_per_token(cfg, prompt_len + step) for step in range(1, new_tokens))
    return {
        "prefill": float(prefill),
        "decode": float(decode),
        "total": float(prefill + decode),
        "per_generated_token": float((prefill + decode) / new_tokens),
        "decode_per_token": float(decode / (new_tokens - 1)) if new_tokens > 1 else 0.0,
    }


def model_flops(
    cfg: model_config.ModelConfig,
    teacher_d_model: int | None = None,
    seq_len: int | None = None,
    ht_blocks: int | None = None,
    teacher_cfg: model_config.ModelConfig | None = None,
    teacher_hidden_layer: int | None = None,
    charge_teacher: bool = False,
    oprd_regressors: int = 1,
) -> dict[str, Any]:
    """Parameter counts and per-token training FLOPs of every method for a student.

    Args:
      cfg: the student's model config.
      teacher_d_model: d_T (regressor output width); default the student's d_model.
      seq_len: if given, also report attention FLOPs per token at this T.
      ht_blocks: blocks run in HLDF phase 1 and OPRD (default L_S // 2).
      teacher_cfg: a live teacher's config (None: the signal is stored, ~0 FLOPs).
      teacher_hidden_layer: the teacher layer its hidden-state terms read.
      charge_teacher: add the live teacher's forward to the per-token costs
        (the paper does not: the default).
      oprd_regressors: OPRD's linear regressors, one per matched teacher layer
        (onpolicy.hidden_layers; ht_blocks is then the deepest matched student layer).

    Returns:
      {"student": param_counts(cfg), "teacher_d_model", "regressor_params":
      {"hldc", "hldf"}, "flops_per_token": {"nll", "kd", "hldc", "ht", "opd",
      "oprd", "oprd_opd"}, "attention_flops_per_token" (None without seq_len),
      "seq_len", "teacher_forward": None, or {"flops_per_token": {cost key:
      teacher FLOPs/token}, "charged", "note", and teacher_forward_flops'}}.
    """
    counts = param_counts(cfg, ht_blocks)
    d_t = (
        cfg.d_model
        if teacher_d_model is None
        else _positive(teacher_d_model, "teacher_d_model", integer=True)
    )
    from trainer.model import regressors

    n_hldc = regressors.regressor_param_count("linear", cfg.d_model, d_t)
    n_hldf = regressors.regressor_param_count("mlp", cfg.d_model, d_t)
    c_data = 6 * counts["backbone_params"] + 6 * cfg.d_model * cfg.vocab_size
    per_token = {
        "nll": float(c_data),
        "kd": float(c_data),  # + C_teacher, ~0: the teacher signal is read from the store.
        "hldc": float(c_data + 6 * n_hldc),
        "ht": float(6 * counts["half_backbone_params"] + 6 * n_hldf),
        "opd": float(c_data),  # The student's logits on its own rollouts.
        "oprd": float(6 * counts["half_backbone_params"] + 6 * oprd_regressors * n_hldc),
        "oprd_opd": float(c_data + 6 * oprd_regressors * n_hldc),
    }
    teacher = None
    if teacher_cfg is not None:
        fwd = teacher_forward_flops(teacher_cfg, seq_len, teacher_hidden_layer)
        teacher = {
            **fwd,
            "flops_per_token": {k: fwd[need] for k, need in TEACHER_FORWARD.items()},
            "charged": bool(charge_teacher),
            "note": (
                "charged: the live teacher's forward is in flops_per_token (teacher.charge_flops)"
                if charge_teacher
                else "not charged, as in the paper (its signal is stored offline there); "
                "--set teacher.charge_flops=True adds it"
            ),
        }
        if charge_teacher:
            for key, extra in teacher["flops_per_token"].items():
                per_token[key] += extra
    attn = attn_ht = None
    if seq_len is not None:
        attn = attention_flops_per_token(cfg, seq_len)
        attn_ht = attention_flops_per_token(cfg, seq_len, counts["ht_blocks"])
    return {
        "student": counts,
        "teacher_d_model": d_t,
        "regressor_params": {"hldc": n_hldc, "hldf": n_hldf},
        "flops_per_token": per_token,
        "seq_len": seq_len,
        "attention_flops_per_token": attn,
        "attention_flops_per_token_ht": attn_ht,
        "teacher_forward": teacher,
    }


def _counts_of(cfg_or_counts) -> dict[str, Any]:
    if isinstance(cfg_or_counts, model_config.ModelConfig):
        return model_flops(cfg_or_counts)
    if isinstance(cfg_or_counts, dict) and "flops_per_token" in cfg_or_counts:
        return cfg_or_counts
    raise ConfigError(
        "expected a ModelConfig or the dict from trainer.flops.model_flops, got "
        f"{type(cfg_or_counts).__name__}"
    )


def ot_budget_flops(cfg_or_counts, k: float) -> float:
    """FLOPs of ``OT_k``: ``k · 20 · N`` tokens at ``C_data`` FLOPs/token.

    Args:
      cfg_or_counts: the student's ModelConfig, or ``model_flops(...)`` of it.
      k: overtraining units (> 0), e.g. 1 for Chinchilla-optimal.
    """
    counts = _counts_of(cfg_or_counts)
    k = _positive(k, "budget in OT units")
    tokens = k * CHINCHILLA_TOKENS_PER_PARAM * counts["student"]["backbone_params"]
    return tokens * counts["flops_per_token"]["nll"]


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Steps per phase of a method under one FLOPs budget.

    Iterating yields the steps of each phase in order (one phase, or two for
    HLDF), so ``zip(phases, plan)`` pairs them.
    """

    method: str
    budget_flops: float
    tokens_per_step: int
    phase_costs: tuple[str, ...]  # flops_per_token key of each phase
    phase_flops_per_token: tuple[float, ...]
    phase_steps: tuple[int, ...]
    p1: float | None

    def __iter__(self):
        return iter(self.phase_steps)

    def __len__(self):
        return len(self.phase_steps)

    @property
    def total_steps(self) -> int:
        return sum(self.phase_steps)

    @property
    def used_flops(self) -> float:
        return sum(
            s * c * self.tokens_per_step
            for s, c in zip(self.phase_steps, self.phase_flops_per_token)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view with phase1_steps / phase2_steps / total_steps."""
        return {
            "method": self.method,
            "budget_flops": self.budget_flops,
            "tokens_per_step": self.tokens_per_step,
            "p1": self.p1,
            "phase1_steps": self.phase_steps[0],
            "phase2_steps": self.phase_steps[1] if len(self.phase_steps) > 1 else 0,
            "total_steps": self.total_steps,
            "total_tokens": self.total_steps * self.tokens_per_step,
            "used_flops": self.used_flops,
            "phase_costs": list(self.phase_costs),
            "flops_per_token": list(self.phase_flops_per_token),
        }


def plan_steps(
    budget_flops: float,
    method: str,
    tokens_per_step: int,
    p1: float | None = None,
    counts: dict[str, Any] | None = None,
    cfg: model_config.ModelConfig | None = None,
    costs: Sequence[str] | None = None,
) -> StepPlan:
    """Steps per phase for ``method`` under ``budget_flops`` (rounded down).

    Args:
      budget_flops: the one training budget (FLOPs).
      method: "nll" | "kd" | "hldc" | "hldf".
      tokens_per_step: global batch × sequence length.
      p1: HLDF phase-1 budget fraction in (0, 1); required for hldf, ignored
        otherwise.
      counts: ``model_flops(...)`` of the student (or pass ``cfg``).
      cfg: the student's config, used when ``counts`` is None.
      costs: the flops_per_token key of each phase, when the method's phases
        are not METHOD_PHASES' (OPRD with a logit term: ("oprd_opd",)).

    Raises:
      ConfigError: unknown method, non-positive budget / tokens, bad p1.
    """
    if method not in METHOD_PHASES:
        raise ConfigError(f"unknown method {method!r}; use one of {list(METHOD_PHASES)}")
    if counts is None:
        if cfg is None:
            raise ConfigError("plan_steps needs counts=model_flops(cfg) or cfg=the student config")
        counts = model_flops(cfg)
    budget = _positive(budget_flops, "budget_flops")
    tokens_per_step = _positive(tokens_per_step, "tokens_per_step", integer=True)
    costs = tuple(costs or METHOD_PHASES[method])
    if len(costs) != len(METHOD_PHASES[method]) or not set(costs) <= set(counts["flops_per_token"]):
        raise ConfigError(
            f"costs {costs} do not fit method {method!r} (phases {METHOD_PHASES[method]}); "
            f"use keys of model_flops' flops_per_token"
        )
    if len(costs) == 2:
        if p1 is None or not 0.0 < float(p1) < 1.0:
            raise ConfigError(
                f"hldf needs p1 in (0, 1) (phase-1 budget fraction), got {p1!r}; "
                "the paper uses 0.01-0.05"
            )
        shares = (float(p1), 1.0 - float(p1))
    else:
        shares, p1 = (1.0,), None
    per_token = tuple(counts["flops_per_token"][c] for c in costs)
    steps = tuple(
        int(math.floor(share * budget / (c * tokens_per_step)))
        for share, c in zip(shares, per_token)
    )
    return StepPlan(method, budget, tokens_per_step, costs, per_token, steps, p1)


# ----------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        self.exit(2, f"trainer.flops: error: {message}\n")


def _parse_args(argv):
    p = _Parser(
        prog="python -m trainer.flops",
        description="Parameter and FLOPs accounting for a student/teacher pair.",
    )
    p.add_argument("--student", required=True, help="student config name, e.g. gemma3-270m")
    p.add_argument("--teacher", required=True, help="teacher config name, e.g. gemma3-4b")
    p.add_argument("--vocab", type=int, required=True, help="vocabulary size V")
    p.add_argument("--seq-len", type=int, default=2048)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-ot", type=float, help="budget in OT units (k·20·N tokens)")
    budget.add_argument("--budget-flops", type=float, help="budget in training FLOPs")
    p.add_argument("--tokens-per-step", type=int, default=256 * 2048)
    p.add_argument("--p1", type=float, default=0.01, help="HLDF phase-1 budget fraction")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def report(
    student: str,
    teacher: str,
    vocab: int,
    seq_len: int = 2048,
    budget_ot: float | None = None,
    budget_flops: float | None = None,
    tokens_per_step: int = 256 * 2048,
    p1: float = 0.01,
) -> dict[str, Any]:
    """The CLI's JSON object: counts, per-token FLOPs and (with a budget) step plans."""
    vocab = _positive(vocab, "vocab", integer=True)
    s_cfg = model_config.get_config(student, vocab_size=vocab)
    t_cfg = model_config.get_config(teacher, vocab_size=vocab)
    out = model_flops(s_cfg, teacher_d_model=t_cfg.d_model, seq_len=seq_len, teacher_cfg=t_cfg)
    teacher_counts = param_counts(t_cfg)
    out["student"]["name"] = student
    out["teacher"] = {"name": teacher, **teacher_counts}
    out["attention_vs_6n"] = out["attention_flops_per_token"] / out["flops_per_token"]["nll"]
    if budget_ot is not None:
        budget_flops = ot_budget_flops(out, budget_ot)
    if budget_flops is not None:
        out["budget"] = {
            "ot": budget_ot,
            "flops": float(budget_flops),
            "tokens_per_step": tokens_per_step,
        }
        out["plans"] = {
            m: plan_steps(budget_flops, m, tokens_per_step, p1=p1, counts=out).to_dict()
            for m in METHOD_PHASES
        }
    return out


# One line per FLOPs/token row of the table (the formulas: module docstring).
_COST_MEANING = {
    "nll": "6N + 6·d_S·V: the student's backbone and de-embedding",
    "kd": "= nll: the teacher's signal is read from the store, not computed",
    "hldc": "kd + the linear regressor W_R (d_S -> d_T)",
    "ht": "HLDF phase 1: first half of the student + MLP regressor, no de-embedding",
    "opd": "= nll: the student's logits on its rollouts (live teacher: see below)",
    "oprd": "first l_S blocks + the linear regressor, no de-embedding",
    "oprd_opd": "nll + the linear regressor: OPRD with an OPD / off-policy logit term",
}


def format_table(rep: dict[str, Any]) -> str:
    """Readable text version of ``report``."""
    s, t = rep["student"], rep["teacher"]
    lines = [
        f"{'':24}{'student':>16}{'teacher':>16}",
        f"{'config':24}{s['name']:>16}{t['name']:>16}",
    ]
    for key in ("backbone_params", "embedding_params", "total_params", "half_backbone_params"):
        lines.append(f"{key:24}{s[key]:>16,}{t[key]:>16,}")
    lines.append(
        f"regressor params: hldc {rep['regressor_params']['hldc']:,}  "
        f"hldf {rep['regressor_params']['hldf']:,}"
    )
    lines.append(f"FLOPs/token (T={rep['seq_len']}; forward + backward of what each trains):")
    for m, v in rep["flops_per_token"].items():
        lines.append(f"  {m:6}{v:>20,.0f}  {_COST_MEANING.get(m, '')}")
    lines.append(
        f"  attention (not in 6N){rep['attention_flops_per_token']:>20,.0f}  "
        f"({100 * rep['attention_vs_6n']:.1f}% of C_data)"
    )
    live = rep.get("teacher_forward")
    if live:
        lines.append(
            f"  live teacher forward/token: {live['full']:,.0f} (logits), {live['hidden']:,.0f} "
            f"(to layer {live['hidden_layer']}); {live['note']}"
        )
    for m, plan in rep.get("plans", {}).items():
        lines.append(
            f"plan {m:5} phase1 {plan['phase1_steps']:>10,}  phase2 "
            f"{plan['phase2_steps']:>10,}  total {plan['total_steps']:>10,} steps"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        rep = report(
            args.student,
            args.teacher,
            args.vocab,
            args.seq_len,
            args.budget_ot,
            args.budget_flops,
            args.tokens_per_step,
            args.p1,
        )
    except ValueError as e:  # ConfigError, ConfigError: already one line with the fix
        print(f"trainer.flops: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep) if args.json else format_table(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
