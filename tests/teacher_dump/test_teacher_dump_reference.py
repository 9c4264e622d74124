"""Extraction vs an independent float64 numpy Gemma 3 of the same tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import teacher_dump
from trainer.model import model_config

K = 16


def _rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def _rope(x_TxNxH, base, scale):
    t, _, h = x_TxNxH.shape
    inv_freq = 1.0 / base ** (np.arange(0, h, 2) / h)
    angles_TxH2 = (np.arange(t)[:, None] / scale) * inv_freq[None, :]
    cos = np.cos(angles_TxH2)[:, None, :]
    sin = np.sin(angles_TxH2)[:, None, :]
    x1, x2 = x_TxNxH[..., : h // 2], x_TxNxH[..., h // 2 :]
    # Rotate-half layout: pairs are (i, i + H/2).
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def reference_forward(p, tokens_T, cfg):
    """Float64 Gemma 3 of one row: (logits [T, V], {l: residual after l blocks})."""
    eps = cfg.rms_norm_eps
    n_heads, n_kv = cfg.num_heads, cfg.num_kv_heads
    t = tokens_T.shape[0]
    scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
    x_TxD = p["embedding"][tokens_T] * np.sqrt(cfg.d_model)
    q_pos, k_pos = np.arange(t)[:, None], np.arange(t)[None, :]
    residuals = {}
    for i in range(cfg.num_layers):
        lp = jax.tree_util.tree_map(lambda a: a[i], p["layers"])  # noqa: B023 (called at once)
        is_global = (i + 1) % cfg.global_every == 0
        h = _rms_norm(x_TxD, lp["pre_attn_norm"], eps)
        q = _rms_norm(np.einsum("td,dnh->tnh", h, lp["attn"]["q"]), lp["attn"]["q_norm"], eps)
        k = _rms_norm(np.einsum("td,dkh->tkh", h, lp["attn"]["k"]), lp["attn"]["k_norm"], eps)
        v = np.einsum("td,dkh->tkh", h, lp["attn"]["v"])
        if is_global:
            q, k = (_rope(a, cfg.rope_global_base, cfg.rope_global_scale) for a in (q, k))
            allowed = k_pos <= q_pos
        else:
            q, k = (_rope(a, cfg.rope_local_base, 1.0) for a in (q, k))
            allowed = (k_pos <= q_pos) & (q_pos - k_pos < cfg.sliding_window)
        group = n_heads // n_kv
        out = np.zeros_like(q)
        for n in range(n_heads):
            s = q[:, n] @ k[:, n // group].T * scale
            s = np.where(allowed, s, -np.inf)
            w = np.exp(s - s.max(-1, keepdims=True))
            out[:, n] = (w / w.sum(-1, keepdims=True)) @ v[:, n // group]
        attn = np.einsum("tnh,nhd->td", out, lp["attn"]["o"])
        x_TxD = x_TxD + _rms_norm(attn, lp["post_attn_norm"], eps)
        h = _rms_norm(x_TxD, lp["pre_mlp_norm"], eps)
        m = lp["mlp"]
        ff = (_gelu_tanh(h @ m["gate"]) * (h @ m["up"])) @ m["down"]
        x_TxD = x_TxD + _rms_norm(ff, lp["post_mlp_norm"], eps)
        residuals[i + 1] = x_TxD
    final = _rms_norm(x_TxD, p["final_norm"], eps)
    return final @ p["embedding"].T, residuals


def _ref_signal(logits_TxV, k):
    m = logits_TxV.max(-1, keepdims=True)
    lse = m + np.log(np.exp(logits_TxV - m).sum(-1, keepdims=True))
    ids = np.argsort(-logits_TxV, axis=-1, kind="stable")[:, :k]
    return ids, np.take_along_axis(logits_TxV, ids, -1) - lse


@pytest.fixture(scope="module")
def tiny(make_params):
    # tiny-7: 7 layers (block 6 global), window 4 << T, GQA 4:2.
    cfg = model_config.get_config("tiny-7", vocab_size=256)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 24), dtype=np.int32)
    return cfg, make_params(cfg, 0), tokens


def test_extraction_matches_float64_reference(tiny):
    cfg, params, tokens = tiny
    layers = (2, 6, 7)
    fn = teacher_dump.make_extract_fn(cfg, k=K, layers=layers, token_tile=9)  # 3 positions/tile
    out = jax.device_get(fn(params, jnp.asarray(tokens)))
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    checked = 0
    for b in range(tokens.shape[0]):
        logits, residuals = reference_forward(p64, tokens[b], cfg)
        ref_ids, ref_lp = _ref_signal(logits, K)
        np.testing.assert_allclose(
            out["topk_logprobs"][b], ref_lp, atol=2e-5, rtol=0
        )  # measured ≤5e-6
        # Ids must agree wherever the reference order is not a near-tie.
        sorted_logits = np.take_along_axis(logits, np.argsort(-logits, -1), -1)[:, : K + 1]
        gaps = -np.diff(sorted_logits, axis=-1)
        clear = (
            np.minimum(
                gaps, np.concatenate([np.full((logits.shape[0], 1), np.inf), gaps[:, :-1]], -1)
            )
            > 1e-4
        )
        np.testing.assert_array_equal(out["topk_ids"][b][clear], ref_ids[clear])
        checked += clear.sum()
        for l in layers:
            scale = np.abs(residuals[l]).max()
            np.testing.assert_allclose(
                out["hidden"][l][b], residuals[l], atol=1e-5 * scale, rtol=1e-5
            )
    assert checked > 0.95 * tokens.size * K
    assert out["topk_ids"].dtype == np.int32 and out["topk_logprobs"].dtype == np.float32
    assert out["hidden"][6].dtype == np.float32


@pytest.fixture(scope="module")
def small(make_params):
    # Cheaper to compile than tiny-7, for the tests that need no reference.
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = make_params(cfg, 2)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 24), dtype=np.int32)
    return cfg, params, tokens


def test_default_layer_is_median(small):
    cfg, params, tokens = small
    out = teacher_dump.make_extract_fn(cfg, k=K)(params, jnp.asarray(tokens))
    assert set(out["hidden"]) == {cfg.num_layers // 2}
    assert out["hidden"][1].shape == tokens.shape + (cfg.d_model,)
    assert out["topk_ids"].shape == tokens.shape + (K,)


def test_tiled_equals_untiled(small):
    cfg, params, tokens = small
    # 72 tokens < the default tile: one tile. 15 → 5 positions × 3 rows per
    # tile: 5 tiles over T=24, the last one padded.
    whole = teacher_dump.make_extract_fn(cfg, k=K)(params, tokens)
    for tile in (15,):
        tiled = teacher_dump.make_extract_fn(cfg, k=K, token_tile=tile)(params, tokens)
        np.testing.assert_array_equal(tiled["topk_ids"], whole["topk_ids"])
        np.testing.assert_allclose(
            tiled["topk_logprobs"], whole["topk_logprobs"], atol=0, rtol=2e-6
        )  # matmul blocking: ~1 ulp


def test_bf16_compute_close_to_fp32(small):
    cfg, params, tokens = small
    out32 = teacher_dump.make_extract_fn(cfg, k=K)(params, tokens)
    # hidden_dtype=None keeps the compute dtype (half the device→host bytes).
    out16 = teacher_dump.make_extract_fn(cfg.replace(dtype="bfloat16"), k=K, hidden_dtype=None)(
        params, tokens
    )
    assert out16["topk_logprobs"].dtype == jnp.float32
    assert out16["hidden"][1].dtype == jnp.bfloat16
    # Top-1 agrees for most tokens; log-probs and hidden within bf16 noise.
    agree = np.mean(np.asarray(out16["topk_ids"][..., 0] == out32["topk_ids"][..., 0]))
    assert agree > 0.9
    np.testing.assert_allclose(
        out16["topk_logprobs"][..., 0], out32["topk_logprobs"][..., 0], atol=0.1
    )
    # Ranking the bf16 logits directly (the GPU default) gives the same signal
    # as ranking their fp32 cast (the CPU default).
    bf16_rank = teacher_dump.make_extract_fn(
        cfg.replace(dtype="bfloat16"), k=K, hidden_dtype=None, rank_float32=False
    )(params, tokens)
    for name in ("topk_ids", "topk_logprobs"):
        np.testing.assert_array_equal(np.asarray(bf16_rank[name]), np.asarray(out16[name]))
    h16 = np.asarray(out16["hidden"][1], np.float32)
    h32 = np.asarray(out32["hidden"][1])
    assert np.abs(h16 - h32).max() < 0.05 * np.abs(h32).max()
