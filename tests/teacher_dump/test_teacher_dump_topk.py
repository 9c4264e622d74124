"""Top-k log-prob math on random logits against a float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teacher_dump import extract, topk
from trainer.model.errors import ConfigError, ModelInputError


def _np_topk_logprobs(logits_NxV, k):
    logits = np.asarray(logits_NxV, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
    # Stable sort on -logit: equal logits keep ascending id order.
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return ids, np.take_along_axis(logits, ids, -1) - lse[:, None]


def test_topk_logprobs_match_float64_reference():
    logits = np.random.default_rng(0).normal(0, 4, (64, 300)).astype(np.float32)
    ids, logprobs = extract.topk_logprobs(jnp.asarray(logits), 17)
    ref_ids, ref_logprobs = _np_topk_logprobs(logits, 17)
    assert ids.dtype == jnp.int32 and logprobs.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_allclose(np.asarray(logprobs), ref_logprobs, atol=1e-5)
    assert np.all(np.diff(np.asarray(logprobs), axis=-1) <= 0)


def test_bf16_logits_rank_like_their_fp32_cast():
    logits = jnp.asarray(np.random.default_rng(1).normal(0, 3, (32, 256)), jnp.bfloat16)
    ids, logprobs = extract.topk_logprobs(logits, 16)
    ids32, logprobs32 = extract.topk_logprobs(logits.astype(jnp.float32), 16)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(ids32))
    np.testing.assert_array_equal(np.asarray(logprobs), np.asarray(logprobs32))


def test_ties_break_towards_lower_id():
    logits = np.zeros((3, 50), np.float32)
    logits[0, [40, 7, 23]] = 2.0  # three-way tie on top
    logits[1, :] = 1.0  # all tied
    logits[2, [9, 3]] = [5.0, 5.0]
    for dtype in (jnp.float32, jnp.bfloat16):
        ids, _ = extract.topk_logprobs(jnp.asarray(logits, dtype), 5)
        ids = np.asarray(ids)
        np.testing.assert_array_equal(ids[0], [7, 23, 40, 0, 1])
        np.testing.assert_array_equal(ids[1], [0, 1, 2, 3, 4])
        np.testing.assert_array_equal(ids[2], [3, 9, 0, 1, 2])


def _np_top_p(logprobs, top_p):
    keep = np.zeros(logprobs.shape, bool)
    for n, row in enumerate(logprobs):
        mass = 0.0
        for j, lp in enumerate(row):
            keep[n, j] = True
            mass += np.exp(lp)
            if mass >= top_p:
                break
    return keep


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_top_p_keeps_shortest_prefix_reaching_mass(top_p):
    logits = np.random.default_rng(2).normal(0, 2, (40, 128)).astype(np.float32)
    ids, logprobs = extract.topk_logprobs(jnp.asarray(logits), 32)
    t_ids, t_lp = extract.truncate_top_p(ids, logprobs, top_p)
    t_ids, t_lp = np.asarray(t_ids), np.asarray(t_lp)
    keep = _np_top_p(np.asarray(logprobs, np.float64), top_p)
    assert keep[:, 0].all()
    np.testing.assert_array_equal(np.isfinite(t_lp), keep)
    np.testing.assert_array_equal(t_ids[keep], np.asarray(ids)[keep])
    np.testing.assert_array_equal(t_ids[~keep], 0)
    assert np.all(t_lp[~keep] == -np.inf)
    if top_p < 1.0:
        assert (~keep).any()  # the test exercises truncation


def test_top_p_one_dominant_token_keeps_one_slot():
    logprobs = jnp.log(jnp.asarray([[0.95, 0.03, 0.02]]))
    ids, lp = extract.truncate_top_p(jnp.asarray([[5, 6, 7]]), logprobs, 0.9)
    np.testing.assert_array_equal(np.asarray(ids), [[5, 0, 0]])
    assert np.isneginf(np.asarray(lp)[0, 1:]).all()


def test_token_range_check():
    extract.check_token_range(np.array([[0, 9]]), 10)
    extract.check_token_range(np.zeros((0, 4), np.int32), 10)
    with pytest.raises(ModelInputError, match="token id 10 .*same vocab_size"):
        extract.check_token_range(np.array([[0, 10]]), 10)
    with pytest.raises(ModelInputError, match="token id -3"):
        extract.check_token_range(np.array([[-3, 1]]), 10)


def _assert_same_as_lax(x, k, group):
    want_vals, want_ids = jax.lax.top_k(x, k)
    vals, ids = jax.jit(lambda x: topk.grouped_top_k(x, k, group))(x)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
    # Bit patterns, so -0.0 / +0.0 and -inf compare exactly.
    view = np.int16 if x.dtype == jnp.bfloat16 else np.int32
    np.testing.assert_array_equal(np.asarray(vals).view(view), np.asarray(want_vals).view(view))


@pytest.mark.parametrize("group", [1, 3, 7, 16])  # 7 and 16 pad the last group (V=1000)
def test_grouped_top_k_equals_lax_top_k_on_random_logits(group):
    x = jnp.asarray(np.random.default_rng(6).normal(0, 3, (48, 1000)), jnp.float32)
    _assert_same_as_lax(x, 40, group)


def test_grouped_top_k_ties_infinities_and_signed_zeros():
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, (6, 300)).astype(np.float32)  # heavy ties everywhere
    x[1] = 1.0  # all tied
    x[2, :270] = -np.inf  # k reaches into the -inf ids
    x[3] = 0.0
    x[3, rng.choice(300, 150, replace=False)] = -0.0  # -0.0 ranks below +0.0
    x[4, ::37] = 2.0  # equal maxima in many groups
    x[5, :] = -np.inf
    for group in (4, 5):
        _assert_same_as_lax(jnp.asarray(x), 40, group)
    _assert_same_as_lax(jnp.asarray(x, jnp.bfloat16), 40, 5)


def test_two_stage_extraction_equals_plain_one(make_params):
    from trainer.model import model_config

    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = make_params(cfg, 8)
    tokens = np.random.default_rng(8).integers(0, 256, (2, 12), dtype=np.int32)
    for top_p in (None, 0.6):
        plain = extract.make_extract_fn(cfg, k=32, layers=(1,), top_p=top_p, topk_group=0)(
            params, tokens
        )
        grouped = extract.make_extract_fn(cfg, k=32, layers=(1,), top_p=top_p, topk_group=4)(
            params, tokens
        )
        for name in ("topk_ids", "topk_logprobs"):
            np.testing.assert_array_equal(np.asarray(plain[name]), np.asarray(grouped[name]))


def test_topk_group_choice_and_refusals():
    from trainer.model import model_config

    small = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    assert extract.resolve_spec(small, k=32).topk_group == 0  # measured: no gain at small V
    assert topk.auto_group("cpu", 262_144, 128) == 16
    assert topk.auto_group("gpu", 262_144, 128) == 0  # unmeasured there: lax.top_k
    for bad in (-1, True, 8):  # 256 / 8 = 32 groups, not more than k=32
        with pytest.raises(ConfigError, match=f"topk_group={bad!r} must be 0"):
            extract.resolve_spec(small, k=32, topk_group=bad)
