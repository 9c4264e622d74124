"""loss.hidden_reduction and the hidden term's printed share (HLDC/HLDF); final.json's wall time."""

import json

import jax
import jax.numpy as jnp
import pytest
import trainer_testlib as tl

from trainer.training import config as config_lib
from trainer.training import data, hidden_share, layer_match, methods, metrics, phase_loss
from trainer.training import loop as train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("share") / "store", num_rows=32)


def test_hldc_prints_its_hidden_share_at_the_first_logged_steps(store, tmp_path, capsys):
    config = tl.tiny_config(
        "hldc", store, tmp_path / "run", steps=5, log_every=1, **{"loss.gamma": 0.5}
    )
    train.run(config)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("hidden term (")]
    assert len(lines) == hidden_share.LOGGED_STEPS
    assert lines[0].startswith(
        "hidden term (hldc, γ=0.5, loss.hidden_reduction=mean over D=64) at step 1: γ·L_emb = "
    )
    assert "of the student's gradient norm" in lines[0]  # first logged step only
    assert all("gradient" not in l for l in lines[1:])
    saved = json.loads((tmp_path / "run" / hidden_share.FILENAME).read_text())
    assert saved["hidden_reduction"] == "mean" and saved["d_teacher"] == 64
    logged = {r["step"]: r for r in metrics.read_metrics(str(tmp_path / "run"))}
    for rec in saved["records"]:
        # The share is γ·hidden_mse / loss of the same logged step (metrics.jsonl).
        m = logged[rec["step"]]
        assert rec["loss_share"] == pytest.approx(0.5 * m["hidden_mse"] / m["loss"], rel=1e-6)
    first = saved["records"][0]
    assert 0 < first["grad_share"] < 1
    assert first["grad_share"] == pytest.approx(
        first["hidden_grad_norm"] / first["total_grad_norm"]
    )
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["wall_s"] > 0 and final["resumed_from_step"] == 0


def _loss_terms(config):
    model_cfg = train.model_config_from(config)
    phase = methods.phases(config, model_cfg.num_layers)[0]
    params = train.model.init_params(model_cfg, jax.random.key(0))
    regressor = layer_match.init_regressor(
        phase.regressor, jax.random.key(1), model_cfg.d_model, 64
    )
    # The same random batch for both reductions, as the loader ships it (stored names).
    host_batch = data.synthetic_batch(
        2, tl.SEQ, tl.VOCAB, k=tl.K, hidden_dim=64, hidden_layer=config.teacher.hidden_layer
    )
    batch = {k: jnp.asarray(v) for k, v in host_batch.items()}
    encoding = data.synthetic_encoding("exact", tl.VOCAB, k=tl.K, hidden_dim=64)
    return phase, phase_loss.loss_fn(
        params,
        regressor,
        batch,
        jnp.int32(0),
        phase=phase,
        config=config,
        model_cfg=model_cfg,
        num_steps=10,
        encoding=encoding,
    )


@pytest.mark.parametrize("method", ["hldc", "hldf"])
def test_sum_reduction_weighs_the_term_d_times_the_mean(method, store, tmp_path):
    values = {}
    for reduction in ("mean", "sum"):
        config = tl.tiny_config(
            method, store, tmp_path / reduction, **{"loss.hidden_reduction": reduction}
        )
        phase, (loss, terms) = _loss_terms(config)
        assert phase.hidden_reduction == reduction
        values[reduction] = float(terms["hidden_mse"])
    assert values["sum"] == pytest.approx(64 * values["mean"], rel=1e-5)


def test_hldf_phase1_share_is_the_whole_loss_and_not_computed():
    phase = methods.Phase(
        index=1,
        flops_method="ht",
        num_blocks=1,
        hidden_term=True,
        hidden_weight=1.0,
        constant_lr=True,
        hidden_reduction="sum",
    )
    record = {"step": 3, **hidden_share.loss_share(phase, {"hidden_mse": 0.25, "loss": 0.25})}
    assert record["loss_share"] == 1.0
    assert hidden_share.describe("hldf", phase, 128, record) == (
        "hidden term (hldf phase 1, loss.hidden_reduction=sum over D=128) at step 3: "
        "L_HT = 0.25 is the whole loss (this phase trains on it alone)"
    )


def test_bad_reduction_is_one_clear_line(store, tmp_path):
    line = tl.cli_error_line(store, tmp_path / "run", "method=hldc", "loss.hidden_reduction=max")
    assert "loss.hidden_reduction" in line and "'max'" in line and "mean" in line, line


def test_a_run_from_before_hidden_reduction_resumes(store, tmp_path):
    config = tl.tiny_config("hldc", store, tmp_path, steps=3)
    old = json.loads(config_lib.to_json(config))
    del old["loss"]["hidden_reduction"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    config_lib.check_same_config_on_resume(config, str(tmp_path))  # read as "mean"
    config.loss.hidden_reduction = "sum"
    with pytest.raises(config_lib.ConfigError, match=r"loss.hidden_reduction: 'mean' -> 'sum'"):
        config_lib.check_same_config_on_resume(config, str(tmp_path))
