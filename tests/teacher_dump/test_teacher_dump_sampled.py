"""Sampled logits (teacher_dump.sampled): draw frequencies, determinism, layout, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teacher_dump import extract, loop, sampled
from teacher_dump.teacher import Teacher
from trainer.model import model_config
from trainer.model.errors import ConfigError, ModelInputError


def _draw(logits_V, num_positions, samples, row=0):
    """The sampled signal of one logit vector repeated at num_positions positions."""
    logits_XxV = jnp.broadcast_to(
        jnp.asarray(logits_V, jnp.float32), (num_positions, len(logits_V))
    )
    lse_X = jax.nn.logsumexp(logits_XxV, -1)
    fn = jax.jit(lambda l, s, r, p: sampled.sample_logprobs(l, s, r, p, samples))
    return fn(
        logits_XxV,
        lse_X,
        jnp.full(num_positions, row, jnp.int32),
        jnp.arange(num_positions, dtype=jnp.int32),
    )


def _frequencies(out, vocab):
    ids = np.asarray(out["sampled_ids"]).ravel()
    counts = np.asarray(out["sampled_counts"]).ravel().astype(np.int64)
    return np.bincount(ids, weights=counts, minlength=vocab) / counts.sum()


@pytest.mark.parametrize("vocab", [7, 300])  # one block; several blocks with a padded last one
def test_draw_frequencies_match_the_softmax(vocab):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, vocab)
    logits[[1, vocab - 1]] = -np.inf  # zero-probability ids, the last one too
    p = np.exp(logits - logits.max())
    p /= p.sum()
    positions, samples = 4000, 8
    freq = _frequencies(_draw(logits, positions, samples), vocab)
    n = positions * samples
    # Binomial 5-sigma bound per id (stratified draws have at most this variance).
    bound = 5 * np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(freq - p) <= bound), np.max(np.abs(freq - p) / bound)
    assert freq[1] == 0 and freq[vocab - 1] == 0


def test_layout_counts_and_logprobs():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (64, 300)).astype(np.float32)
    logits[:, 5] = -np.inf
    lse = jax.nn.logsumexp(jnp.asarray(logits), -1)
    out = sampled.sample_logprobs(
        jnp.asarray(logits), lse, jnp.arange(64), jnp.zeros(64, jnp.int32), 12
    )
    ids, counts, lp = (
        np.asarray(out[k]) for k in ("sampled_ids", "sampled_counts", "sampled_logprobs")
    )
    assert ids.dtype == np.int32 and counts.dtype == np.uint8 and lp.dtype == np.float32
    np.testing.assert_array_equal(counts.astype(int).sum(-1), 12)
    full = counts > 0
    for row_ids, row_full in zip(ids, full):
        n = row_full.sum()
        assert row_full[:n].all() and not row_full[n:].any()  # empty slots last
        assert np.all(np.diff(row_ids[:n]) > 0)  # distinct, ascending
        assert np.all(row_ids[n:] == 0)
    assert not np.any(ids[full] == 5)
    ref = logits.astype(np.float64)
    ref_lse = np.log(np.exp(ref).sum(-1))
    want = np.take_along_axis(ref, ids, -1) - ref_lse[:, None]
    np.testing.assert_allclose(lp[full], want[full], atol=1e-5)
    assert np.all(lp[~full] == -np.inf)


def test_draws_depend_on_row_and_position_only():
    logits = np.random.default_rng(2).normal(0, 1, 50)
    a, b = _draw(logits, 6, 5, row=3), _draw(logits, 6, 5, row=4)
    assert not np.array_equal(np.asarray(a["sampled_ids"]), np.asarray(b["sampled_ids"]))
    u1 = sampled.stratified_uniforms(jnp.array([3, 7]), jnp.array([2, 2]), 5)
    u2 = sampled.stratified_uniforms(jnp.array([[7]]), jnp.array([[2]]), 5)
    np.testing.assert_array_equal(np.asarray(u1[1]), np.asarray(u2[0, 0]))
    strata = np.floor(np.asarray(u1) * 5)
    np.testing.assert_array_equal(strata, np.broadcast_to(np.arange(5), (2, 5)))


@pytest.fixture(scope="module")
def tiny(make_params):
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    return cfg, make_params(cfg, 5)


def test_same_row_in_two_batches_gets_the_same_draws(tiny):
    cfg, params = tiny
    fn = extract.make_extract_fn(cfg, k=8, layers=(1,), samples=6, token_tile=16)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (3, 12), dtype=np.int32)
    # Row 11 sits at batch index 1, then 0, beside other rows.
    first = fn(params, tokens[[0, 1]], np.array([10, 11], np.int32))
    second = fn(params, tokens[[1, 2]], np.array([11, 4], np.int32))
    for name in ("sampled_ids", "sampled_counts", "sampled_logprobs"):
        np.testing.assert_array_equal(np.asarray(first[name])[1], np.asarray(second[name])[0])
    assert not np.array_equal(
        np.asarray(first["sampled_ids"])[0], np.asarray(second["sampled_ids"])[0]
    )


def test_samples_leave_the_top_k_unchanged_and_share_its_logsumexp(tiny):
    cfg, params = tiny
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 10), dtype=np.int32)
    plain = extract.make_extract_fn(cfg, k=cfg.vocab_size, layers=(1,))(params, tokens)
    both = extract.make_extract_fn(cfg, k=cfg.vocab_size, layers=(1,), samples=9)(
        params, tokens, np.array([0, 1], np.int32)
    )
    for name in ("topk_ids", "topk_logprobs"):
        np.testing.assert_array_equal(np.asarray(plain[name]), np.asarray(both[name]))
    # k = V: every id's top-k log-prob is there; the sampled ones must be identical.
    full_BxTxV = np.full(plain["topk_ids"].shape, np.nan, np.float32)
    np.put_along_axis(
        full_BxTxV, np.asarray(plain["topk_ids"]), np.asarray(plain["topk_logprobs"]), -1
    )
    ids, counts = np.asarray(both["sampled_ids"]), np.asarray(both["sampled_counts"])
    lp = np.asarray(both["sampled_logprobs"])
    want = np.take_along_axis(full_BxTxV, ids, -1)
    np.testing.assert_array_equal(lp[counts > 0], want[counts > 0])
    only = extract.make_extract_fn(cfg, k=0, layers=(1,), samples=9)(
        params, tokens, np.array([0, 1])
    )
    assert "topk_ids" not in only
    np.testing.assert_array_equal(np.asarray(only["sampled_ids"]), ids)


def test_extract_rows_keys_draws_by_row_ids(tiny):
    cfg, params = tiny
    teacher = Teacher(cfg=cfg, params=params)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (5, 8), dtype=np.int32)
    rows = np.arange(100, 105)
    whole = loop.concat_batches(
        loop.extract_rows(teacher, tokens, batch_size=2, k=4, layers=(1,), samples=3, row_ids=rows)
    )
    tail = loop.concat_batches(
        loop.extract_rows(
            teacher, tokens[3:], batch_size=2, k=4, layers=(1,), samples=3, row_ids=rows[3:]
        )
    )
    np.testing.assert_array_equal(whole["sampled_ids"][3:], tail["sampled_ids"])
    np.testing.assert_array_equal(whole["sampled_counts"][3:], tail["sampled_counts"])
    with pytest.raises(ModelInputError, match="pass row_ids"):
        next(loop.extract_rows(teacher, tokens, batch_size=2, k=4, samples=3))
    with pytest.raises(ModelInputError, match="row ids must be"):
        next(loop.extract_rows(teacher, tokens, batch_size=2, k=4, samples=3, row_ids=rows[:2]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=4, samples=256), r"samples=256 is outside \[0, 255\]"),
        (dict(k=4, samples=-1), "samples=-1"),
        (dict(k=4, samples=True), "samples=True"),
        (dict(k=0), r"k=0 is outside \[1, "),
        (dict(k=0, samples=4, top_p=0.9), "top_p truncates the top-k but k=0"),
    ],
)
def test_bad_sampling_options_are_refused(tiny, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        extract.make_extract_fn(tiny[0], **kwargs)


def test_missing_rows_are_refused(tiny):
    cfg, params = tiny
    fn = extract.make_extract_fn(cfg, k=4, samples=2)
    with pytest.raises(ConfigError, match="pass rows_B"):
        fn(params, np.zeros((1, 4), np.int32))


def test_stratified_draws_cover_the_strata_an_id_spans():
    # p = (0.5, 0.3, 0.2), S = 4, strata [0, .25), ..., [.75, 1): id 0's CDF
    # interval [0, .5) is exactly two strata (2 draws); id 1's [.5, .8) holds
    # one whole stratum (1 or 2); id 2's [.8, 1) none (0 or 1). I.i.d. draws
    # would give id 0 anything from 0 to 4.
    out = _draw(np.log([0.5, 0.3, 0.2]), 500, 4)
    ids, counts = np.asarray(out["sampled_ids"]), np.asarray(out["sampled_counts"]).astype(int)
    per_id = np.zeros((500, 3), int)
    np.add.at(per_id, (np.arange(500)[:, None], ids), counts)  # empty slots add 0 at id 0
    assert np.all(per_id[:, 0] == 2)
    assert set(per_id[:, 1]) == {1, 2} and set(per_id[:, 2]) == {0, 1}
