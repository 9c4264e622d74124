"""Gradient accumulation (trainer.training.microbatch): M micro-batches give the full
batch's loss, metrics and gradients; terms are normalised by the global token count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model import gemma3 as model
from trainer.model.errors import ConfigError
from trainer.training import config as config_lib
from trainer.training import data, decode, layer_match, methods, microbatch, phase_loss, sharding
from trainer.training import loop as train


def _close(actual, expected, what, tol=1e-6):
    """Each leaf equal to `tol` relative to its norm: ‖a − e‖ ≤ tol·‖e‖ (float32; the
    accumulated sums are added in another order, so single elements that nearly
    cancel may differ by a few ulps of the leaf's larger elements)."""
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        err = np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30)
        assert err <= tol, f"{what} {jax.tree_util.keystr(path)}: relative error {err:.2e} > {tol}"


def _tree_close(actual, expected, what, tol=1e-6):
    """The whole tree to `tol` of its global norm (how an optimizer sees a gradient)."""
    diff = sum(
        np.sum((np.asarray(a, np.float64) - np.asarray(e, np.float64)) ** 2)
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
    )
    norm = sum(np.sum(np.asarray(e, np.float64) ** 2) for e in jax.tree.leaves(expected))
    assert np.sqrt(diff / norm) <= tol, f"{what}: relative error {np.sqrt(diff / norm):.2e}"


@pytest.mark.parametrize("method,phase_index", [("nll", 0), ("kd", 0), ("hldc", 0), ("hldf", 0)])
def test_accumulated_loss_and_gradients_equal_the_full_batch(method, phase_index):
    config = tl.tiny_config(method, "/unused", "/unused")
    model_cfg = train.model_config_from(config)
    phase = methods.phases(config, model_cfg.num_layers)[phase_index]
    # The stored arrays the phase reads, as the loader ships them (decoded in loss_fn).
    encoding = data.synthetic_encoding("exact", config.model.vocab_size, k=tl.K, hidden_dim=64)
    names = decode.BatchSpec(encoding=encoding, fields=phase.fields).names
    batch = data.synthetic_batch(
        8,
        config.data.seq_len,
        config.model.vocab_size,
        k=tl.K,
        hidden_dim=64,
        seed=1,
        hidden_layer=config.teacher.hidden_layer,
    )
    batch = {k: jnp.asarray(batch[k]) for k in names}
    params = model.init_params(model_cfg, jax.random.key(0))
    regressor = layer_match.init_regressor(
        phase.regressor, jax.random.key(1), model_cfg.d_model, config.teacher.d_model
    )
    trainables = {"params": params, "regressor": regressor}

    def loss_of(t, part, counts):
        return phase_loss.loss_fn(
            t["params"],
            t["regressor"],
            part,
            jnp.int32(3),
            phase=phase,
            config=config,
            model_cfg=model_cfg,
            num_steps=20,
            encoding=encoding,
            counts=counts,
        )

    def run(m):
        return jax.jit(
            lambda t, b: microbatch.value_and_grad(
                loss_of,
                t,
                b,
                m,
                counts_fn=lambda x: phase_loss.token_counts(x, phase),
                constant_metrics=phase_loss.CONSTANT_METRICS,
            )
        )(trainables, batch)

    (loss1, metrics1), grads1 = run(1)
    for m in (4,):  # 8 rows: 4 micro-batches of 2 (one more M only adds compile time)
        (loss_m, metrics_m), grads_m = run(m)
        _close(loss_m, loss1, f"loss M={m}")
        assert set(metrics_m) == set(metrics1)
        _close(metrics_m, metrics1, f"metrics M={m}")
        # The gradient to 1e-6 of its norm; each leaf to 1e-5 of its own (a small
        # leaf summed over every token, e.g. k_norm, shows float32 reordering ~1e-6).
        _tree_close(grads_m, grads1, f"grads M={m}")
        _close(grads_m, grads1, f"grads M={m}", tol=1e-5)
    assert float(loss1) > 0 and (not phase.kd_term or float(metrics1["alpha"]) > 0)


def test_terms_are_normalised_by_the_global_token_count_not_per_micro_batch():
    """Rows with different numbers of kept tokens: accumulation must divide each
    micro-batch's sum by the whole batch's count. Reference: float64 numpy with
    the gradient derived by hand; the mean of micro-batch means is shown to miss it."""
    rng = np.random.default_rng(0)
    B, T, D, M = 8, 6, 5, 4
    x_BxTxD = rng.normal(size=(B, T, D)).astype(np.float32)
    w_D = rng.normal(size=(D,)).astype(np.float32)
    keep_BxT = np.arange(T)[None, :] < np.array([6, 1, 5, 2, 6, 3, 4, 1])[:, None]
    batch = {"x": jnp.asarray(x_BxTxD), "mask": jnp.asarray(keep_BxT.astype(np.float32))}

    def loss_fn(w, part, counts):
        per_token = jnp.square(part["x"] @ w)
        total = jnp.sum(per_token * part["mask"])
        loss = total / (jnp.sum(part["mask"]) if counts is None else counts["sq"])
        return loss, {"sq": loss}

    counts_fn = lambda b: {"sq": jnp.sum(b["mask"])}
    (loss, metrics), grad = microbatch.value_and_grad(
        loss_fn, jnp.asarray(w_D), batch, M, counts_fn=counts_fn
    )
    x64, w64, keep = x_BxTxD.astype(np.float64), w_D.astype(np.float64), keep_BxT
    pred = x64 @ w64
    n = keep.sum()
    ref_loss = (pred**2 * keep).sum() / n
    ref_grad = np.einsum("bt,btd->d", 2 * pred * keep, x64) / n  # d/dw of Σ m (x·w)² / N
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["sq"]), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-5, atol=1e-6)
    # The trap this guards against: averaging micro-batch means (unequal counts).
    parts = microbatch.split(batch, M)
    means = [
        loss_fn(jnp.asarray(w_D), jax.tree.map(lambda a: a[i], parts), None)[0]  # noqa: B023
        for i in range(M)
    ]
    assert abs(float(np.mean(means)) - ref_loss) > 1e-3 * ref_loss


def test_split_keeps_each_devices_rows_on_that_device():
    """Micro-batch m holds rows m, m+M, ...: with 8 rows on 4 devices (2 each) and
    M=2, each micro-batch takes one row from every device."""
    rows = jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)
    parts = microbatch.split({"r": rows}, 2)["r"]
    assert parts[:, :, 0].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_runner_step_with_micro_batches_matches_full_batch_on_a_sharded_mesh():
    """The trainer's own step (4 devices, data × fsdp): same metrics and update."""
    mesh = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
    out = {}
    for m in (1, 2):
        config = tl.tiny_config("kd", "/unused", "/unused", **{"data.micro_batches": m})
        model_cfg = train.model_config_from(config)
        phase = methods.phases(config, model_cfg.num_layers)[0]
        plan = train.PhasePlan(
            phase=phase,
            num_steps=20,
            flops_per_token=train.phase_flops_per_token(config, model_cfg, phase),
        )
        runner = train.PhaseRunner(config, model_cfg, plan, mesh)
        state = runner.init_state(jax.random.key(0))
        batch = data.synthetic_batch(
            8, config.data.seq_len, config.model.vocab_size, k=tl.K, seed=2
        )
        state, step_metrics = runner.step(state, runner.put_batch(batch))
        out[m] = jax.device_get((step_metrics, state.params))
    _close(out[2][0], out[1][0], "metrics")
    # One AdamW step moves a param by ~lr·g/|g|: where g is tiny, float noise in g
    # shows in the update, so params are compared to 1e-5 of their norm.
    _close(out[2][1], out[1][1], "params", tol=1e-5)


def test_micro_batches_that_do_not_divide_the_per_device_batch_are_refused():
    with pytest.raises(
        ConfigError,
        match=r"data.micro_batches=3 does not divide the per-device "
        r"batch 16/4=4 rows; use one of \[1, 2, 4\]",
    ):
        microbatch.check_micro_batches(3, 16, 4)
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        microbatch.check_micro_batches(0, 16, 4)
    microbatch.check_micro_batches(4, 16, 4)


def test_old_runs_resume_with_legacy_remat_and_other_micro_batches(tmp_path):
    """A config.json from before (model.remat a bool, no data.micro_batches) resumes
    under a remat policy and gradient accumulation: they change memory, not math."""
    config = tl.tiny_config("kd", str(tmp_path / "s"), str(tmp_path))
    old = json.loads(config_lib.to_json(config))
    old["model"]["remat"] = False
    del old["data"]["micro_batches"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "1").mkdir()
    config.model.remat = "full"
    config.data.micro_batches = 2
    config_lib.check_same_config_on_resume(config, str(tmp_path))
    config.optim.lr = 1.0  # A real change is still refused.
    with pytest.raises(ConfigError, match="optim.lr"):
        config_lib.check_same_config_on_resume(config, str(tmp_path))
