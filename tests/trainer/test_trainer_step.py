"""The train step: HLDF phase 1 touches only the first half + regressor; one trace
per step; 8 sharded devices give the 1-device result."""

import jax
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.training import data, methods, sharding
from trainer.training import loop as train


def _runner(method, mesh, phase_index=0, **sets):
    config = tl.tiny_config(method, "/unused", "/unused", **sets)
    config.budget.unit = "flops"
    model_cfg = train.model_config_from(config)
    phase = methods.phases(config, model_cfg.num_layers)[phase_index]
    plan = train.PhasePlan(
        phase=phase,
        num_steps=20,
        flops_per_token=train.phase_flops_per_token(config, model_cfg, phase),
    )
    return config, model_cfg, train.PhaseRunner(config, model_cfg, plan, mesh)


def _batch(config, seed=0, seq_len=None):
    return data.synthetic_batch(
        config.data.batch_size,
        seq_len or config.data.seq_len,
        config.model.vocab_size,
        k=tl.K,
        hidden_dim=64,
        seed=seed,
        hidden_layer=config.teacher.hidden_layer,
    )


def test_hldf_phase1_touches_only_embedding_first_half_and_regressor():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    config, model_cfg, runner = _runner("hldf", mesh)
    assert runner.plan.phase.num_blocks == model_cfg.num_layers // 2 == 2
    state = runner.init_state(jax.random.key(0))
    before = jax.device_get(state)
    for seed in range(2):
        state, step_metrics = runner.step(state, runner.put_batch(_batch(config, seed)))
    after = jax.device_get(state)
    half = runner.plan.phase.num_blocks
    for path, b in jax.tree_util.tree_leaves_with_path(before.params["layers"]):
        a = after.params["layers"]
        for key in path:
            a = a[key.key]
        assert not np.array_equal(a[:half], b[:half]) or "norm" in jax.tree_util.keystr(path), (
            f"first-half {jax.tree_util.keystr(path)} did not train"
        )
        np.testing.assert_array_equal(a[half:], b[half:], err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(after.params["final_norm"], before.params["final_norm"])
    # The embedding feeds block 1, so phase 1 trains it (docs/DESIGN.md §1: "embedding + L_S/2 blocks").
    assert not np.array_equal(after.params["embedding"], before.params["embedding"])
    for name in before.regressor:
        assert not np.array_equal(after.regressor[name], before.regressor[name]), name
    assert set(before.regressor) == {"w1", "b1", "w2", "b2"}
    assert "kd" not in step_metrics and "hidden_mse" in step_metrics


def test_step_is_traced_once():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    config, _, runner = _runner("kd", mesh)
    state = runner.init_state(jax.random.key(0))
    state, _ = runner.step(state, runner.put_batch(_batch(config, 0)))
    state, _ = runner.step(state, runner.put_batch(_batch(config, 1)))  # cached, no trace
    with pytest.raises(AssertionError, match="traced > 1 times"):
        runner.step(state, runner.put_batch(_batch(config, 2, seq_len=16)))


@pytest.mark.parametrize(
    "method, axes",
    [
        ("kd", (4, 2, 1)),
        pytest.param("hldc", (4, 2, 1), marks=pytest.mark.slow),
        pytest.param("kd", (2, 2, 2), marks=pytest.mark.slow),  # with the tensor axis
    ],
)
def test_sharded_step_equals_single_device(method, axes):
    """8 CPU devices (data × fsdp × tensor) vs 1 device, 2 steps, same init and batches.

    Tolerance rtol 2e-5 / atol 1e-6: sharding changes the order of the fp32
    reductions (batch means, FSDP all-gathers/reduce-scatters), nothing else.
    """
    single = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    multi = sharding.make_mesh(*axes)
    assert multi.size == 8
    config, _, r1 = _runner(method, single)
    _, _, r8 = _runner(method, multi)
    s1 = r1.init_state(jax.random.key(0))
    s8 = jax.device_put(jax.device_get(s1), r8.state_shardings)
    vocab_axis = "tensor" if axes[2] > 1 else None
    assert s8.params["embedding"].sharding.spec == jax.sharding.PartitionSpec(vocab_axis, "fsdp")
    for seed in range(2):
        batch = _batch(config, seed)
        s1, m1 = r1.step(s1, r1.put_batch(batch))
        s8, m8 = r8.step(s8, r8.put_batch(batch))
        for key in m1:
            np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
        jax.device_get(s8.trainables),
        jax.device_get(s1.trainables),
    )
