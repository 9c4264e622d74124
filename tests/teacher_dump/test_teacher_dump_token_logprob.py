"""The teacher's log-prob of each realized next token (token_logprob, store/rollout.py): against an
independent float64 numpy Gemma 3, bitwise the top-k's value, and encoded as the store encodes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_teacher_dump_reference import reference_forward

import teacher_dump
from store import StoreInputError, StoreSchema, rollout
from teacher_dump import encode
from trainer.model import model_config
from trainer.model.errors import ConfigError


def _ref_token_logprob(logits_TxV, tokens_T):
    """log softmax(logits)[t, tokens[t+1]] in float64, 0 at the last position."""
    m = logits_TxV.max(-1, keepdims=True)
    logp = logits_TxV - (m + np.log(np.exp(logits_TxV - m).sum(-1, keepdims=True)))
    out = np.zeros(tokens_T.shape, np.float64)
    out[:-1] = logp[np.arange(len(tokens_T) - 1), tokens_T[1:]]
    return out


def test_matches_float64_reference_across_tiles(make_params):
    # tiny-7: 7 layers (block 6 global), window 4 << T; 9-token tiles = 3 positions of 3 rows each.
    cfg = model_config.get_config("tiny-7", vocab_size=256)
    params = make_params(cfg, 0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 24), dtype=np.int32)
    fn = teacher_dump.make_extract_fn(cfg, k=0, layers=(), token_tile=9, token_logprob=True)
    out = jax.device_get(fn(params, jnp.asarray(tokens)))
    assert set(out) == {"token_logprob", "hidden"}
    assert out["token_logprob"].dtype == np.float32 and out["token_logprob"].shape == (3, 24)
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    for b in range(tokens.shape[0]):
        logits, _ = reference_forward(p64, tokens[b], cfg)
        ref = _ref_token_logprob(logits, tokens[b])
        np.testing.assert_allclose(out["token_logprob"][b], ref, atol=2e-5, rtol=0)  # as top-k's
        assert out["token_logprob"][b, -1] == 0.0


def test_bitwise_the_topk_logprob_of_the_realized_token(make_params):
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = make_params(cfg, 2)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (4, 20), dtype=np.int32)
    # k = V: every realized token is in the top-k; the same logit minus the same logsumexp.
    out = jax.device_get(
        teacher_dump.make_extract_fn(cfg, k=256, layers=(1,), token_tile=16, token_logprob=True)(
            params, tokens
        )
    )
    hit = out["topk_ids"][:, :-1] == tokens[:, 1:, None]
    assert (hit.sum(-1) == 1).all()
    slot = hit.argmax(-1)[..., None]
    from_topk = np.take_along_axis(out["topk_logprobs"][:, :-1], slot, -1)[..., 0]
    np.testing.assert_array_equal(out["token_logprob"][:, :-1], from_topk)
    # Without the option nothing changes: no key, the same top-k.
    plain = jax.device_get(
        teacher_dump.make_extract_fn(cfg, k=256, layers=(1,), token_tile=16)(params, tokens)
    )
    assert "token_logprob" not in plain
    np.testing.assert_array_equal(plain["topk_logprobs"], out["topk_logprobs"])


def test_k_zero_needs_a_signal():
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    with pytest.raises(ConfigError, match="0 only with samples > 0 or token_logprob"):
        teacher_dump.make_extract_fn(cfg, k=0)
    with pytest.raises(ConfigError, match="token_logprob=1 must be True or False"):
        teacher_dump.make_extract_fn(cfg, k=4, token_logprob=1)


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_device_encoding_is_the_stores(profile):
    schema = StoreSchema(
        seq_len=6,
        k=0,
        vocab_size=50,
        profile=profile,
        rows_per_unit=4,
        loss_mask=True,
        token_logprob=True,
    )
    rng = np.random.default_rng(0)
    lp = (-rng.exponential(2.0, (4, 6))).astype(np.float32)
    lp[:, -1] = 0
    lp[1, 2] = 3e-4  # float rounding above 0: both clip it
    got = jax.tree_util.tree_map(
        np.asarray, jax.jit(lambda s: encode.encode_signal(s, schema))({"token_logprob": lp})
    )
    assert set(got["arrays"]) == {"token_logprob"} and got["finite"].all()  # loss_mask: the input's
    host = rollout.check_inputs(4, schema, np.ones((4, 6), np.uint8), lp, lambda n, x, s, k: x)
    assert got["arrays"]["token_logprob"].tobytes() == host["token_logprob"].tobytes()
    lp[2, 0] = np.nan
    bad = jax.jit(lambda s: encode.encode_signal(s, schema))({"token_logprob": lp})
    with pytest.raises(StoreInputError, match="row 2: the teacher signal has NaN/inf"):
        encode.host_arrays(bad)
