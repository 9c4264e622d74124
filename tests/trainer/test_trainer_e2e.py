"""Fast end-to-end: a tiny store written via the store API → a few trainer steps
for every method, through the same `train.run` the CLI calls."""

import json
import os

import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model import model_io
from trainer.training import loop as train
from trainer.training import metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("e2e") / "store", num_rows=32)


# Cumulative training FLOPs of the 4-step tiny runs, derived by hand (update only
# if the tiny model, trainer/configs/tiny.py or the docs/DESIGN.md §1 cost formulas change).
# "tiny": V=512, L=4, D=64, F=128, 2 heads / 1 kv head of 32. Per block: norms 4·64
# + q 64·2·32 + k, v 2·64·32 + o 2·32·64 + q/k norms 2·32 + MLP 3·64·128 = 37,184;
# backbone N = 4·37,184 + 64 (final norm) = 148,800.
# C_data = 6N + 6·D·V = 892,800 + 196,608 = 1,089,408 FLOPs/token (nll, kd);
# hldc adds 6·(64·64) = 24,576 -> 1,113,984; HLDF phase 1 ("ht"): 6·(2 blocks =
# 74,368) + 6·(64·256 + 256 + 256·64 + 64 = 33,088) = 644,736.
# Tokens/step 8·32 = 256; budget 4.5 NLL steps = 1,089,408·256·4.5 FLOPs:
# nll/kd 4 steps, hldc floor(4.40) = 4, hldf p1=0.2: phase 1 floor(1.52) = 1 step,
# phase 2 floor(3.6) = 3 steps.
EXPECTED_FLOPS = {
    "nll": 4 * 1_089_408 * 256,  # 1,115,553,792
    "kd": 4 * 1_089_408 * 256,
    "hldc": 4 * 1_113_984 * 256,  # 1,140,719,616
    "hldf": 1 * 644_736 * 256 + 3 * 1_089_408 * 256,  # 1,001,717,760
}


@pytest.mark.parametrize("method", ["nll", "kd", "hldc", "hldf"])
def test_each_method_runs_and_writes_the_run_dir(method, store, tmp_path):
    config = tl.tiny_config(
        method, store, tmp_path / "run", steps=4, log_every=1, checkpoint_every=3
    )
    summary = train.run(config)
    assert summary["global_step"] == 4  # hldf: 1 + 3 (see EXPECTED_FLOPS)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "final.json", "checkpoints", "export", "tb"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["method"] == method
    assert os.listdir(run / "tb")
    records = metrics.read_metrics(str(run))
    assert [r["step"] for r in records] == list(range(1, summary["global_step"] + 1))
    for r in records:
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["lr"] >= 0
    assert config.budget.value == 1_089_408 * 256 * 4.5
    expected_flops = EXPECTED_FLOPS[method]
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
    config = tl.tiny_config(
        "hldc",
        store,
        tmp_path / "run",
        steps=3,
        **{"loss.alpha": 0.0, "loss.gamma": 0.5, "teacher.d_model": 32},
    )
    summary = train.run(config)
    assert "kd" not in summary and summary["hidden_mse"] > 0
    assert summary["loss"] == pytest.approx(summary["nll"] + 0.5 * summary["hidden_mse"], rel=1e-5)
