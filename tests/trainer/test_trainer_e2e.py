"""Fast end-to-end: a tiny store written via the store API → a few trainer steps
for every method, through the same `train.run` the CLI calls."""
import json
import os

import numpy as np
import pytest

import trainer_testlib as tl
from trainer.training import metrics, loop as train
from trainer.model import model_io


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("e2e") / "store", num_rows=32)


@pytest.mark.parametrize("method", ["nll", "kd", "hldc", "hldf"])
def test_each_method_runs_and_writes_the_run_dir(method, store, tmp_path):
    config = tl.tiny_config(method, store, tmp_path / "run", steps=4, log_every=1,
                            checkpoint_every=3)
    summary = train.run(config)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "final.json", "checkpoints", "export", "tb"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["method"] == method
    assert os.listdir(run / "tb")
    records = metrics.read_metrics(str(run))
    assert [r["step"] for r in records] == list(range(1, summary["global_step"] + 1))
    for r in records:
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] >= 0
    plans = train.plan_phases(config, train.model_config_from(config),
                              train.methods.phases(config, 4))
    tokens = config.data.batch_size * config.data.seq_len
    expected_flops = sum(p.num_steps * p.flops_per_token * tokens for p in plans)
    assert summary["cumulative_flops"] == pytest.approx(expected_flops)
    assert records[-1]["cumulative_flops"] == pytest.approx(expected_flops)
    last = records[-1]
    if method == "nll":
        assert "kd" not in last and last["loss"] == pytest.approx(last["nll"])
    else:
        assert {"kd", "nll", "top1_agreement", "alpha"} <= set(last)
    if method == "hldc":
        assert "hidden_mse" in last
    if method == "hldf":
        assert {r["phase"] for r in records} == {1, 2}
        phase1 = [r for r in records if r["phase"] == 1]
        assert all(set(r) >= {"hidden_mse"} and "kd" not in r for r in phase1)
    # The export is the student alone: the model tree, no regressor.
    cfg, params, meta = model_io.load_model(str(run / "export"))
    assert set(params) == {"embedding", "final_norm", "layers"}
    assert meta["method"] == method and cfg.num_layers == 4


def test_teacher_pretraining_on_tokens_only_store(tmp_path):
    store = tl.make_store(tmp_path / "tok", num_rows=16, k=0, layers=())
    config = tl.tiny_config("nll", store, tmp_path / "run", steps=3)
    assert train.run(config)["global_step"] == 3


def test_representation_only_with_narrower_teacher(tmp_path):
    # α = 0, γ > 0 (no logit distillation, no top-k read) and d_T = 32 < d_S = 64.
    store = tl.make_store(tmp_path / "narrow", num_rows=16, k=0, hidden_dim=32)
    config = tl.tiny_config("hldc", store, tmp_path / "run", steps=3, **{
        "loss.alpha": 0.0, "loss.gamma": 0.5, "teacher.d_model": 32})
    summary = train.run(config)
    assert "kd" not in summary and summary["hidden_mse"] > 0
    assert summary["loss"] == pytest.approx(summary["nll"] + 0.5 * summary["hidden_mse"],
                                            rel=1e-5)
