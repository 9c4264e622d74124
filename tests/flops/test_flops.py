"""trainer.flops: counts from the real model tree, docs/DESIGN.md §1 formulas, budgets, CLI."""

import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest

from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config, regressors
from trainer.model.errors import ConfigError


def _real_count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_param_counts_equal_counting_a_real_init():
    cfg = model_config.get_config("tiny")
    params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(0))
    counts = flops.param_counts(cfg)
    assert counts["total_params"] == _real_count(params)
    assert counts["embedding_params"] == params["embedding"].size == cfg.vocab_size * cfg.d_model
    assert counts["backbone_params"] == _real_count(params) - params["embedding"].size
    half = cfg.num_layers // 2
    first_half = jax.tree_util.tree_map(lambda x: x[:half], params["layers"])
    assert counts["half_backbone_params"] == _real_count(first_half)
    # Not N/2: the final norm belongs to neither half.
    assert counts["half_backbone_params"] * 2 == counts["backbone_params"] - cfg.d_model


def test_flops_per_token_follow_design_formulas():
    cfg = model_config.get_config("tiny-7")
    d_t = 96
    out = flops.model_flops(cfg, teacher_d_model=d_t)
    n = out["student"]["backbone_params"]
    n_half = out["student"]["half_backbone_params"]
    n_lin = regressors.regressor_param_count("linear", cfg.d_model, d_t)
    n_mlp = regressors.regressor_param_count("mlp", cfg.d_model, d_t)
    assert out["regressor_params"] == {"hldc": n_lin, "hldf": n_mlp}
    c_data = 6 * n + 6 * cfg.d_model * cfg.vocab_size
    assert out["flops_per_token"] == {
        "nll": c_data,
        "kd": c_data,
        "hldc": c_data + 6 * n_lin,
        "ht": 6 * n_half + 6 * n_mlp,
        "opd": c_data,
        "oprd": 6 * n_half + 6 * n_lin,
        "oprd_opd": c_data + 6 * n_lin,
    }
    assert out["attention_flops_per_token"] is None  # no seq_len given
    assert out["teacher_forward"] is None  # no live teacher: its signal is stored


def test_live_teacher_forward_flops_charged_only_when_asked():
    # Hand-derived: the teacher forward is 2·N_T (+ 2·d_T·V twice where logits are read:
    # forward and the tiled loss's recomputation), never backward; hidden terms run
    # only the blocks up to the compared layer.
    cfg = model_config.get_config("tiny-7")
    teacher = model_config.get_config("tiny")
    t_counts = flops.param_counts(teacher, 2)
    full = 2 * t_counts["backbone_params"] + 2 * 2 * teacher.d_model * teacher.vocab_size
    hidden = 2 * t_counts["half_backbone_params"]
    free = flops.model_flops(cfg, teacher_cfg=teacher, teacher_hidden_layer=2)
    paid = flops.model_flops(cfg, teacher_cfg=teacher, teacher_hidden_layer=2, charge_teacher=True)
    assert free["teacher_forward"]["flops_per_token"] == {
        "kd": full,
        "hldc": full,
        "ht": hidden,
        "opd": full,
        "oprd": hidden,
        "oprd_opd": full,
    }
    assert (
        not free["teacher_forward"]["charged"] and "not charged" in free["teacher_forward"]["note"]
    )
    assert paid["teacher_forward"]["charged"]
    for key, cost in free["flops_per_token"].items():
        extra = free["teacher_forward"]["flops_per_token"].get(key, 0.0)  # nll: no teacher
        assert paid["flops_per_token"][key] == cost + extra


@pytest.mark.parametrize("seq_len", [3, 10])
def test_attention_flops_match_brute_force_mask_count(seq_len):
    # tiny-7: window 4, block 6 (0-based 5) is global.
    cfg = model_config.get_config("tiny-7")
    i = np.arange(seq_len)[:, None]
    j = np.arange(seq_len)[None, :]
    pairs = 0
    for layer in range(cfg.num_layers):
        mask = j <= i
        if not cfg.is_global(layer):
            mask &= (i - j) < cfg.sliding_window
        pairs += int(mask.sum())
    want = 3 * 4 * cfg.num_heads * cfg.head_dim * pairs / seq_len
    assert flops.attention_flops_per_token(cfg, seq_len) == pytest.approx(want, rel=1e-12)
    half = flops.attention_flops_per_token(cfg, seq_len, num_blocks=3)
    assert half < flops.attention_flops_per_token(cfg, seq_len)


def test_ot_budget_and_plan_steps_match_hand_formulas():
    cfg = model_config.get_config("tiny")
    counts = flops.model_flops(cfg, teacher_d_model=48)
    n = counts["student"]["backbone_params"]
    c = counts["flops_per_token"]
    budget = flops.ot_budget_flops(counts, 3)
    assert budget == pytest.approx(3 * 20 * n * c["nll"], rel=1e-12)
    assert flops.ot_budget_flops(cfg, 3) == pytest.approx(3 * 20 * n * c["nll"], rel=1e-12)
    tps = 4 * 16
    for method, key in (("nll", "nll"), ("kd", "kd"), ("hldc", "hldc")):
        plan = flops.plan_steps(budget, method, tps, p1=0.05, counts=counts)
        assert list(plan) == [math.floor(budget / (c[key] * tps))]
        assert plan.p1 is None and plan.to_dict()["phase2_steps"] == 0
        assert plan.used_flops <= budget
    plan = flops.plan_steps(budget, "hldf", tps, p1=0.05, counts=counts)
    p1_steps = math.floor(0.05 * budget / (c["ht"] * tps))
    p2_steps = math.floor(0.95 * budget / (c["kd"] * tps))
    assert list(plan) == [p1_steps, p2_steps]
    d = plan.to_dict()
    assert (d["phase1_steps"], d["phase2_steps"], d["total_steps"]) == (
        p1_steps,
        p2_steps,
        p1_steps + p2_steps,
    )
    assert d["used_flops"] <= budget
    # NLL trains 20·N·3 tokens at OT_3 (up to one step of rounding).
    nll_tokens = flops.plan_steps(budget, "nll", tps, counts=counts).to_dict()["total_tokens"]
    assert 0 <= 3 * 20 * n - nll_tokens < tps


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda c: flops.plan_steps(1e12, "fitnets", 10, counts=c), "unknown method 'fitnets'"),
        (lambda c: flops.plan_steps(1e12, "hldf", 10, counts=c), "hldf needs p1 in"),
        (lambda c: flops.plan_steps(1e12, "hldf", 10, p1=1.0, counts=c), "hldf needs p1 in"),
        (lambda c: flops.plan_steps(-1.0, "nll", 10, counts=c), "budget_flops=-1.0 must be"),
        (lambda c: flops.plan_steps(1e12, "nll", 0, counts=c), "tokens_per_step=0 must be"),
        (lambda c: flops.plan_steps(1e12, "nll", 10), "needs counts=model_flops"),
        (lambda c: flops.ot_budget_flops(c, 0), "budget in OT units=0 must be"),
        (lambda c: flops.ot_budget_flops({"x": 1}, 1), "expected a ModelConfig"),
        (lambda c: flops.param_counts(model_config.get_config("tiny"), ht_blocks=9), "ht_blocks=9"),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    counts = flops.model_flops(model_config.get_config("tiny"))
    with pytest.raises(ConfigError, match=match):
        call(counts)
    assert issubclass(ConfigError, ValueError)


def test_cli_json_on_paper_configs_matches_design_sizes(capsys):
    """docs/DESIGN.md §2: with V=32,000 backbones ~100M / ~698M / ~3.21B.

    Golden values are the real counts of trainer.model's Gemma 3 tree; update
    them only if the model definition legitimately changes (and docs/DESIGN.md §2 with it).
    """
    assert (
        flops.main(
            [
                "--student",
                "gemma3-270m",
                "--teacher",
                "gemma3-4b",
                "--vocab",
                "32000",
                "--budget-ot",
                "1",
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["student"]["backbone_params"] == 100_326_016
    assert rep["student"]["embedding_params"] == 32000 * 640
    assert rep["student"]["total_params"] == 100_326_016 + 32000 * 640
    assert rep["teacher"]["backbone_params"] == 3_209_010_688
    assert rep["regressor_params"] == {
        "hldc": 640 * 2560,
        "hldf": 640 * 2560 + 2560 + 2560 * 2560 + 2560,
    }
    assert set(rep["flops_per_token"]) == {"nll", "kd", "ht", "hldc", "opd", "oprd", "oprd_opd"}
    assert rep["attention_flops_per_token"] > 0
    assert set(rep["plans"]) == {"nll", "kd", "hldc", "hldf", "opd", "oprd"}
    assert not rep["teacher_forward"]["charged"]
    assert (
        flops.main(
            ["--student", "gemma3-1b", "--teacher", "gemma3-4b", "--vocab", "32000", "--json"]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert round(rep["student"]["backbone_params"] / 1e6) == 698
    assert round(rep["teacher"]["backbone_params"] / 1e7) == 321


def test_cli_table_and_module_entry_point():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.flops",
            "--student",
            "tiny",
            "--teacher",
            "tiny-7",
            "--vocab",
            "512",
            "--seq-len",
            "16",
            "--budget-flops",
            "1e12",
            "--tokens-per-step",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backbone_params" in proc.stdout and "plan hldf" in proc.stdout


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["--student", "gemma9", "--teacher", "tiny", "--vocab", "512"],
            "unknown model config 'gemma9'",
        ),
        (["--student", "tiny", "--teacher", "tiny", "--vocab", "abc"], "invalid int value"),
        (
            ["--student", "tiny", "--teacher", "tiny", "--vocab", "512", "--budget-ot", "-1"],
            "budget in OT units=-1.0 must be",
        ),
        (
            ["--student", "tiny", "--teacher", "tiny", "--vocab", "512", "--seq-len", "0"],
            "seq_len=0 must be",
        ),
        (
            [
                "--student",
                "tiny",
                "--teacher",
                "tiny",
                "--vocab",
                "512",
                "--budget-ot",
                "1",
                "--budget-flops",
                "1e9",
            ],
            "not allowed with argument",
        ),
    ],
)
def test_cli_bad_input_one_line_exit_2(argv, match, capsys):
    try:
        rc = flops.main(argv)
    except SystemExit as e:  # argparse-level errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and match in err, err
