"""OPRD on several teacher layers (onpolicy.hidden_layers), against float64 numpy.

Teacher tiny-7 (7 layers), student tiny (4 layers). Layers "3,6" with the anchor
teacher.hidden_layer=3 ↔ student_layer L_S//2 = 2 match teacher layer 6 to student
layer round(6·2/3) = 4. The two-layer term must be the mean of the two one-layer
runs' terms (3 ↔ 2 and 6 ↔ 4, each with its own regressor) on the same batch, and
the float64 reference of that mean; the one-layer default must compose exactly as
before several layers existed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from store import SchemaMismatchError, StoreSchema
from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io, regressors
from trainer.training import (
    layer_match,
    live_teacher,
    losses,
    methods,
    onpolicy,
    phase_loss,
    sharding,
    store_align,
)
from trainer.training.config import ConfigError, validate
from trainer.training.signals import Batch

B, T = 2, 12
LOSS_MASK = np.array([[0] * 4 + [1] * 6 + [0] * 2, [0] * 3 + [1] * 9], np.float32)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    cfg = model_config.get_config("tiny-7", vocab_size=tl.VOCAB)
    model_io.save_model(path, cfg, model.init_params(cfg, jax.random.key(7)), metadata={})
    return str(path)


@pytest.fixture(scope="module")
def student():
    cfg = model_config.get_config("tiny", vocab_size=tl.VOCAB)
    return cfg, model.init_params(cfg, jax.random.key(3))


def _config(method="oprd", **sets):
    base = {"loss.token_tile": 8, "teacher.hidden_layer": 3, "teacher.d_model": 64}
    return tl.tiny_config(method, "/nonexistent", "/nonexistent", **{**base, **sets})


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, tl.VOCAB, (B, T)).astype(np.int32)


def _reg(seed):
    return {"w": jax.random.normal(jax.random.key(seed), (64, 64)) / 8.0}


def _loss(config, student, batch, regressor, teacher=None):
    s_cfg, s_params = student
    (phase,) = methods.phases(config, s_cfg.num_layers)
    loss, metrics = phase_loss.batch_loss(
        s_params,
        regressor,
        batch,
        jnp.int32(0),
        phase=phase,
        config=config,
        model_cfg=s_cfg,
        num_steps=10,
        teacher_params=None if teacher is None else teacher.params,
        teacher_cfg=None if teacher is None else teacher.model_cfg,
    )
    return phase, loss, metrics


def _teacher(config):
    return live_teacher.load(config, sharding.make_mesh(devices=jax.devices()[:1]))


def _activations64(params, cfg, tokens, layer):
    return np.asarray(
        model.forward(params, tokens, cfg, capture_layers=(layer,)).captured[layer], np.float64
    )


def _mse64(pred, target):
    """float64 per-token normalized MSE (mean over D), masked mean over completion tokens."""

    def unit(x):
        return x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)

    mse_BxT = ((unit(pred) - unit(target)) ** 2).mean(-1)
    return (mse_BxT * LOSS_MASK).sum() / LOSS_MASK.sum()


def test_layers_map_to_the_same_relative_depth():
    config = _config(**{"onpolicy.hidden_layers": "6,3,1"})
    (phase,) = methods.phases(config, 4)
    assert phase.hidden_layers == (1, 3, 6) and phase.student_layers == (1, 2, 4)
    assert phase.num_blocks == 4 and phase.per_layer_regressors  # The deepest matched layer.
    assert phase.fields == ("tokens", "hidden/1", "hidden/3", "hidden/6", "loss_mask")
    (one,) = methods.phases(_config(), 4)
    assert (one.hidden_layers, one.student_layers, one.num_blocks) == ((3,), (2,), 2)
    reg = layer_match.init_regressor(one.regressor, jax.random.key(0), 64, 64, layers=(1, 3, 6))
    assert sorted(reg) == ["layer_1", "layer_3", "layer_6"]
    axes = layer_match.regressor_logical_axes(one.regressor, reg)
    assert axes["layer_6"] == {"w": ("embed", "teacher_embed")}
    # FLOPs: blocks to the deepest student layer, one 64 x 64 regressor per teacher layer.
    args = layer_match.hidden_flops_args(config, 4)
    assert args == {"ht_blocks": 4, "teacher_hidden_layer": 6, "oprd_regressors": 3}
    s_cfg = model_config.get_config("tiny", vocab_size=tl.VOCAB)
    per_token = flops.model_flops(s_cfg, **args)["flops_per_token"]["oprd"]
    one_reg = flops.model_flops(s_cfg, ht_blocks=4)["flops_per_token"]["oprd"]
    assert per_token - one_reg == 6 * 2 * 64 * 64  # Two more W_R: 6 FLOPs per weight.


def test_two_layers_are_the_mean_of_two_one_layer_runs(teacher_dir, student):
    tokens = _tokens()
    batch = Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK))
    live = {"teacher.checkpoint": teacher_dir}
    two = _config(**live, **{"onpolicy.hidden_layers": "3,6"})
    teacher = _teacher(two)
    reg3, reg6 = _reg(5), _reg(6)
    _, loss, m = _loss(two, student, batch, {"layer_3": reg3, "layer_6": reg6}, teacher)
    # The two one-layer runs: 3 ↔ 2 (the default pair) and 6 ↔ 4 (student_layer set).
    _, _, m3 = _loss(_config(**live), student, batch, reg3, teacher)
    one6 = _config(**live, **{"teacher.hidden_layer": 6, "student_layer": 4})
    _, _, m6 = _loss(one6, student, batch, reg6, teacher)
    assert float(m["hidden_mse_l3"]) == pytest.approx(float(m3["hidden_mse"]), rel=1e-6)
    assert float(m["hidden_mse_l6"]) == pytest.approx(float(m6["hidden_mse"]), rel=1e-6)
    mean = (float(m3["hidden_mse"]) + float(m6["hidden_mse"])) / 2
    assert float(m["hidden_mse"]) == pytest.approx(mean, rel=1e-6) and loss == m["hidden_mse"]
    # Independent reference: float64 numpy of both layers' normalized MSE, averaged.
    s_cfg, s_params = student
    want = np.mean(
        [
            _mse64(
                _activations64(s_params, s_cfg, tokens, l_s) @ np.asarray(reg["w"], np.float64),
                _activations64(teacher.params, teacher.model_cfg, tokens, l_t),
            )
            for l_t, l_s, reg in ((3, 2, reg3), (6, 4, reg6))
        ]
    )
    assert float(m["hidden_mse"]) == pytest.approx(want, rel=1e-5)
    assert abs(float(m3["hidden_mse"]) - float(m6["hidden_mse"])) > 1e-3 * want  # Not one layer.


def test_stored_layers_give_the_live_terms(teacher_dir, student):
    """The store path: each hidden/<l> field, decoded as x/rms(x), reaches its own regressor."""
    tokens = _tokens(1)
    config = _config(**{"onpolicy.hidden_layers": "3,6"})
    t_cfg, t_params, _ = model_io.load_model(teacher_dir)
    captured = model.forward(t_params, jnp.asarray(tokens), t_cfg, capture_layers=(3, 6)).captured
    by_layer = {l: live_teacher.rms_normalized(captured[l]) for l in (3, 6)}
    batch = Batch(
        tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK), hidden_by_layer=by_layer
    )
    regs = {"layer_3": _reg(5), "layer_6": _reg(6)}
    phase, _, m = _loss(config, student, batch, regs)
    assert not phase.live and phase.fields == ("tokens", "hidden/3", "hidden/6", "loss_mask")
    s_cfg, s_params = student
    for l_t, l_s in ((3, 2), (6, 4)):
        pred = _activations64(s_params, s_cfg, tokens, l_s) @ np.asarray(
            regs[f"layer_{l_t}"]["w"], np.float64
        )
        want = _mse64(pred, np.asarray(captured[l_t], np.float64))
        assert float(m[f"hidden_mse_l{l_t}"]) == pytest.approx(want, rel=1e-5), l_t


def test_one_layer_default_composes_bitwise_as_before(teacher_dir, student):
    """teacher.hidden_layer alone (onpolicy.hidden_layers "" or that one layer) is the term as
    it was before several layers existed, bit for bit: the student forward to L_S//2, W_R,
    normalized_mse, masked_mean; the regressor tree and its init are the plain linear one's."""
    s_cfg, s_params = student
    tokens = _tokens(2)
    batch = Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(LOSS_MASK))

    @jax.jit
    def before(p, r, b, t):
        h = model.forward(p, b.tokens, s_cfg, capture_layers=(2,), num_blocks=2).captured[2]
        t_cfg = model_io.load_config(teacher_dir)
        target = live_teacher.forward(t, b.tokens, t_cfg, hidden_layers=(3,), logits=False)
        mse = losses.normalized_mse(regressors.apply_linear(r, h), target.hidden[3])
        return losses.masked_mean(mse, onpolicy.hidden_mask(b.loss_mask))

    for sets in ({}, {"onpolicy.hidden_layers": "3"}):
        config = _config(**{"teacher.checkpoint": teacher_dir, **sets})
        teacher = _teacher(config)
        (phase,) = methods.phases(config, s_cfg.num_layers)
        reg = layer_match.init_regressor(
            phase.regressor, jax.random.key(9), 64, 64, layers=phase.hidden_layers
        )
        plain = regressors.init_regressor("linear", jax.random.key(9), 64, 64)
        assert set(reg) == {"w"} and np.array_equal(reg["w"], plain["w"])

        @jax.jit
        def now(p, r, b, t, config=config, teacher=teacher):
            return _loss(config, (s_cfg, p), b, r, dataclasses.replace(teacher, params=t))[1:]

        loss, m = now(s_params, reg, batch, teacher.params)
        want = before(s_params, reg, batch, teacher.params)
        assert np.asarray(loss).tobytes() == np.asarray(want).tobytes()
        assert set(m) == {"hidden_mse", "loss"}


@pytest.mark.parametrize(
    "sets,needle",
    [
        ({"onpolicy.hidden_layers": "3,x"}, "must be comma-separated layer numbers"),
        ({"onpolicy.hidden_layers": "3,3"}, "must list distinct teacher layers >= 1"),
        ({"onpolicy.hidden_layers": "0,3"}, "must list distinct teacher layers >= 1"),
        ({"onpolicy.hidden_layers": "2,6"}, "lacks teacher.hidden_layer=3"),
        ({"method": "hldc", "onpolicy.hidden_layers": "3,6"}, "read by method=oprd only"),
        ({"onpolicy.hidden_layers": 3.5}, "must be comma-separated layer numbers"),
    ],
)
def test_bad_layer_lists_are_refused_in_one_line(sets, needle):
    with pytest.raises(ConfigError) as err:
        validate(_config(**sets))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_layer_the_live_teacher_lacks_is_refused(teacher_dir):
    config = _config(**{"teacher.checkpoint": teacher_dir, "onpolicy.hidden_layers": "3,6,9"})
    t_cfg = live_teacher.teacher_config(config)
    with pytest.raises(ConfigError) as err:
        live_teacher.check_compatible(config, t_cfg, {}, None, hidden=True)
    msg = str(err.value)
    assert "it has 7 layers but onpolicy.hidden_layers='3,6,9' names [9] (drop them)" in msg
    assert "\n" not in msg


def test_a_store_without_a_chosen_layer_is_refused():
    config = _config(**{"onpolicy.hidden_layers": "3,6"})
    schema = StoreSchema(
        seq_len=config.data.seq_len,
        k=0,
        vocab_size=config.model.vocab_size,
        hidden_layers=(3,),
        hidden_dim=64,
        loss_mask=True,
    )
    with pytest.raises(SchemaMismatchError) as err:
        store_align.check_store(config, schema, "S", needs_topk=False, needs_hidden=True)
    msg = str(err.value)
    assert "layer(s) [6] are not stored (stored: [3]" in msg and "--hidden-layers 3 6" in msg
    assert "\n" not in msg
    stored = dataclasses.replace(schema, hidden_layers=(3, 6))
    store_align.check_store(config, stored, "S", needs_topk=False, needs_hidden=True)
