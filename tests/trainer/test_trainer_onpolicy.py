"""On-policy terms (OPD, OPRD, GKD's λ) on hand-built rollout batches, against float64 numpy.

Batches are `signals.Batch`es with `loss_mask` and `token_logprob` made here
(the rollout store's reader is trainer.training.decode's); references are
computed from the models' logits / activations in float64, with the masks
written out by hand from the agreed shift rule (a logit term at i weighs
loss_mask[:, i+1], the last position 0; a hidden term at i weighs loss_mask[:, i]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.training import layer_match, live_teacher, methods, onpolicy, phase_loss, sharding
from trainer.training.config import ConfigError, validate
from trainer.training.signals import Batch

B, T = 2, 12
# Row 0: prompt of 4, completion of 6, 2 padding; row 1: prompt of 3, completion to the end.
LOSS_MASK = np.array([[0] * 4 + [1] * 6 + [0] * 2, [0] * 3 + [1] * 9], np.float32)
PROMPT = np.array([[1] * 4 + [0] * 8, [1] * 3 + [0] * 9], np.float32)  # Padding is not prompt.


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    cfg = model_config.get_config("tiny-7", vocab_size=tl.VOCAB)
    params = model.init_params(cfg, jax.random.key(7))
    params["embedding"] = params["embedding"] * 3.0
    model_io.save_model(path, cfg, params, metadata={})
    return str(path)


def _config(method, **sets):
    return tl.tiny_config(method, "/nonexistent", "/nonexistent", **{"loss.token_tile": 8, **sets})


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, tl.VOCAB, (B, T)).astype(np.int32)


def _run(config, batch, teacher=None, regressor=None):
    s_cfg = model_config.get_config("tiny", vocab_size=tl.VOCAB)
    s_params = model.init_params(s_cfg, jax.random.key(3))
    (phase,) = methods.phases(config, s_cfg.num_layers)
    loss, metrics = phase_loss.batch_loss(
        s_params,
        regressor if regressor is not None else {},
        batch,
        jnp.int32(0),
        phase=phase,
        config=config,
        model_cfg=s_cfg,
        num_steps=10,
        teacher_params=None if teacher is None else teacher.params,
        teacher_cfg=None if teacher is None else teacher.model_cfg,
    )
    return phase, float(loss), {k: float(v) for k, v in metrics.items()}, (s_cfg, s_params)


def _log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logprobs(params, cfg, tokens):
    return _log_softmax64(
        model.unembed(params, model.forward(params, tokens, cfg).final_hidden_BxTxD, cfg)
    )


def _shift(mask):
    return np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], axis=1)


def _teacher(config):
    return live_teacher.load(config, sharding.make_mesh(devices=jax.devices()[:1]))


def test_masks_follow_the_agreed_shift_rule():
    assert np.array_equal(onpolicy.logit_mask(LOSS_MASK), _shift(LOSS_MASK))
    assert np.array_equal(onpolicy.hidden_mask(LOSS_MASK), LOSS_MASK)
    assert np.array_equal(onpolicy.prompt_mask(LOSS_MASK), PROMPT)
    assert np.array_equal(onpolicy.offpolicy_logit_mask(LOSS_MASK), _shift(PROMPT))


def test_opd_live_is_the_exact_reverse_kl_on_completion_tokens(teacher_dir):
    config = _config("opd", **{"teacher.checkpoint": teacher_dir})
    tokens = _tokens()
    teacher = _teacher(config)
    phase, loss, metrics, (s_cfg, s_params) = _run(
        config, Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK)), teacher
    )
    assert phase.fields == ("tokens", "loss_mask") and phase.flops_method == "opd"
    logq = _logprobs(s_params, s_cfg, tokens)
    logp = _logprobs(teacher.params, teacher.model_cfg, tokens)
    kl_BxT = (np.exp(logq) * (logq - logp)).sum(-1)
    w = _shift(LOSS_MASK)
    want = (kl_BxT * w).sum() / w.sum()
    assert metrics["opd"] == pytest.approx(want, rel=1e-5) and loss == metrics["opd"]


def test_opd_estimator_uses_the_realized_token(teacher_dir):
    config = _config("opd")
    tokens = _tokens()
    t_cfg, t_params, _ = model_io.load_model(teacher_dir)
    logp = _logprobs(t_params, t_cfg, tokens)
    token_logprob = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    token_logprob = np.concatenate([token_logprob, np.zeros((B, 1))], 1).astype(np.float32)
    batch = Batch(
        tokens=jnp.asarray(tokens),
        loss_mask=jnp.asarray(LOSS_MASK),
        token_logprob=jnp.asarray(token_logprob),
    )
    phase, _, metrics, (s_cfg, s_params) = _run(config, batch)
    assert phase.fields == ("tokens", "loss_mask", "token_logprob")
    logq = _logprobs(s_params, s_cfg, tokens)
    logq_y = np.take_along_axis(logq[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    est = np.concatenate([logq_y, np.zeros((B, 1))], 1) - token_logprob
    w = _shift(LOSS_MASK)
    assert metrics["opd"] == pytest.approx((est * w).sum() / w.sum(), rel=1e-5)


def test_opd_estimator_is_unbiased_in_value_and_gradient():
    # One position, V=16: y ~ q, the student's own sample. The mean estimate is
    # KL(q‖p) and the mean gradient its gradient, q_j (log q_j − log p_j − KL),
    # which a pathwise gradient of log q(y) − log p(y) (mean 0) would miss.
    rng = np.random.default_rng(0)
    s_V = rng.normal(size=16) * 1.5
    logp = _log_softmax64(rng.normal(size=16) * 1.5)
    logq = _log_softmax64(s_V)
    kl = (np.exp(logq) * (logq - logp)).sum()
    grad_kl = np.exp(logq) * (logq - logp - kl)
    n = 20000
    y = rng.choice(16, size=n, p=np.exp(logq))

    def estimate(s):
        logq_N = jax.nn.log_softmax(s)[y]
        return onpolicy.opd_estimate(logq_N, jnp.asarray(logp[y], jnp.float32))

    s = jnp.asarray(s_V, jnp.float32)
    values = np.asarray(estimate(s), np.float64)
    grad = np.asarray(jax.grad(lambda s: jnp.mean(estimate(s)))(s), np.float64)
    assert abs(values.mean() - kl) < 4 * values.std() / np.sqrt(n)
    # Per-sample gradients e·(onehot(y) − q): their SE bounds the error of the mean.
    per_sample = (values[:, None]) * (np.eye(16)[y] - np.exp(logq))
    se = per_sample.std(0) / np.sqrt(n)
    assert np.all(np.abs(grad - grad_kl) < 4 * se + 1e-6), (grad, grad_kl)
    assert np.abs(grad_kl).max() > 10 * se.max()  # The test can tell 0 from the gradient.


def _oprd_reference(config, teacher, tokens, regressor, s_cfg, s_params):
    """float64 normalized MSE (mean over D) of W_R h_S vs the teacher layer, per token."""
    layer_s = layer_match.student_layer(config, s_cfg.num_layers)
    h_s = np.asarray(
        model.forward(s_params, tokens, s_cfg, capture_layers=(layer_s,)).captured[layer_s],
        np.float64,
    )
    h_t = np.asarray(
        model.forward(teacher.params, tokens, teacher.model_cfg, capture_layers=(3,)).captured[3],
        np.float64,
    )
    pred = h_s @ np.asarray(regressor["w"], np.float64)

    def unit(x):
        return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)

    return ((unit(pred) - unit(h_t)) ** 2).mean(-1)


def test_oprd_hidden_term_on_completion_tokens_only(teacher_dir):
    config = _config("oprd", **{"teacher.checkpoint": teacher_dir, "teacher.hidden_layer": 3})
    tokens = _tokens()
    teacher = _teacher(config)
    reg = {"w": jax.random.normal(jax.random.key(5), (64, 64)) / 8.0}
    phase, loss, metrics, (s_cfg, s_params) = _run(
        config, Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK)), teacher, reg
    )
    # No logit term: the student's first l_S blocks only, no [B,T,V] anywhere.
    assert not phase.logit_pass and phase.num_blocks == 2 and phase.flops_method == "oprd"
    mse = _oprd_reference(config, teacher, tokens, reg, s_cfg, s_params)
    want = (mse * LOSS_MASK).sum() / LOSS_MASK.sum()
    assert metrics["hidden_mse"] == pytest.approx(want, rel=1e-5) and loss == metrics["hidden_mse"]


def test_oprd_plus_opd_mixed_with_offpolicy_kd_by_lambda(teacher_dir):
    lam, beta, alpha, tau = 0.75, 0.5, 0.7, 2.0
    config = _config(
        "oprd",
        **{
            "teacher.checkpoint": teacher_dir,
            "teacher.hidden_layer": 3,
            "onpolicy.lam": lam,
            "onpolicy.opd_weight": beta,
            "loss.alpha": alpha,
            "loss.tau": tau,
        },
    )
    tokens = _tokens(1)
    teacher = _teacher(config)
    reg = {"w": jax.random.normal(jax.random.key(5), (64, 64)) / 8.0}
    phase, loss, metrics, (s_cfg, s_params) = _run(
        config, Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK)), teacher, reg
    )
    assert phase.flops_method == "oprd_opd" and phase.num_blocks is None
    logq = _logprobs(s_params, s_cfg, tokens)
    logp = _logprobs(teacher.params, teacher.model_cfg, tokens)
    w_on, w_off = _shift(LOSS_MASK), _shift(PROMPT)
    opd = ((np.exp(logq) * (logq - logp)).sum(-1) * w_on).sum() / w_on.sum()
    nll_BxT = -np.concatenate(
        [np.take_along_axis(logq[:, :-1], tokens[:, 1:, None], -1)[..., 0], np.zeros((B, 1))], 1
    )
    nll = (nll_BxT * w_off).sum() / w_off.sum()
    logq_t, logp_t = _log_softmax64(logq / tau), _log_softmax64(logp / tau)
    kd = ((np.exp(logp_t) * (logp_t - logq_t)).sum(-1) * w_off).sum() / w_off.sum()
    mse = _oprd_reference(config, teacher, tokens, reg, s_cfg, s_params)
    hidden = (mse * LOSS_MASK).sum() / LOSS_MASK.sum()
    for name, want in (("opd", opd), ("nll", nll), ("kd", kd), ("hidden_mse", hidden)):
        assert metrics[name] == pytest.approx(want, rel=1e-5), name
    off = (1 - alpha) * nll + alpha * tau**2 * kd
    assert loss == pytest.approx(lam * (hidden + beta * opd) + (1 - lam) * off, rel=1e-5)


def test_onpolicy_fields_without_a_live_teacher():
    s_layers = 4
    (oprd,) = methods.phases(_config("oprd", **{"onpolicy.opd_weight": 1.0}), s_layers)
    assert oprd.fields == ("tokens", "hidden/2", "loss_mask", "token_logprob")
    (mixed,) = methods.phases(_config("opd", **{"onpolicy.lam": 0.5}), s_layers)
    assert mixed.fields == ("tokens", "topk", "loss_mask", "token_logprob")


@pytest.mark.parametrize(
    "sets,needle",
    [
        ({"onpolicy.lam": 1.5}, "onpolicy.lam=1.5 must be in [0, 1]"),
        ({"onpolicy.lam": 0.0}, "--set method=kd"),
        ({"onpolicy.opd_weight": -1.0}, "onpolicy.opd_weight=-1.0 must be >= 0"),
        ({"teacher.live_topk": 8}, "--set teacher.checkpoint=PATH or teacher.live_topk=0"),
        ({"teacher.charge_flops": True}, "teacher.charge_flops=False"),
        ({"teacher.checkpoint": "/x", "loss.signal": "sampled"}, "drop --set loss.signal=sampled"),
    ],
)
def test_bad_onpolicy_settings_are_refused(sets, needle):
    with pytest.raises(ConfigError, match=None) as err:
        validate(_config("opd", **sets))
    assert needle in str(err.value)


def test_token_counts_of_a_store_without_a_loss_mask(teacher_dir):
    # Micro-batching divides each term by its global token count. A store without a
    # loss_mask (e.g. a live teacher on a tokens-only store) reads as all completion
    # tokens, as decode_batch reads it: counts by hand — OPD weighs positions 0..T-2
    # of each row (the last predicts nothing), the hidden term every position.
    config = _config("oprd", **{"teacher.checkpoint": teacher_dir, "onpolicy.opd_weight": 1.0})
    (phase,) = methods.phases(config, 4)
    tokens = jnp.asarray(_tokens())
    counts = phase_loss.token_counts({"tokens": tokens}, phase)
    assert {k: float(v) for k, v in counts.items()} == {"hidden_mse": B * T, "opd": B * (T - 1)}
    with_mask = phase_loss.token_counts({"tokens": tokens, "loss_mask": jnp.ones((B, T))}, phase)
    assert {k: float(v) for k, v in with_mask.items()} == {k: float(v) for k, v in counts.items()}
