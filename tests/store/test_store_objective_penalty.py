"""store.objective_penalty against hand-derived optima (and the stats CLI).

Closed form at τ = 1, tail="zero" (derived in the module docstring and by hand
here): minimising (1-α)·(−Σ p log q) + α·(−Σ_k P_k log q_k) over the simplex,
P_k = p_k/(1-m), gives q_k = (1-α)p_k + αP_k and Q = (1-α)m, so

    penalty = (1-m)·log 1/((1-α) + α/(1-m)) + m·log 1/(1-α).

E.g. m = 0.35, α = 0.9: 0.65·log(1/1.484615) + 0.35·log(10) = −0.25685 + 0.80590 = 0.54905.
"""

import json
import math

import numpy as np
import pytest

from store import objective_penalty as op
from store.cli import main
from store.errors import StoreInputError


def _flat_topk(k, m, n=3):
    """n positions whose top-k share 1-m equally (the tail holds m)."""
    return np.full((n, k), math.log((1 - m) / k))


def test_zero_tail_tau1_closed_form_hand_value():
    got = op.summarize(_flat_topk(8, 0.35), 1000, 0.9, 1.0, "zero")
    assert got["penalty_nats"] == pytest.approx(0.549054, abs=2e-6)
    assert got["warn"] and "WARNING" in op.describe(got) and "lower loss.alpha" in op.describe(got)


@pytest.mark.parametrize("m,alpha", [(0.35, 0.7), (0.1, 0.7), (0.6, 0.5)])
def test_zero_tail_tau1_matches_closed_form(m, alpha):
    want = (1 - m) * math.log(1 / ((1 - alpha) + alpha / (1 - m))) + m * math.log(1 / (1 - alpha))
    got = op.position_penalties(_flat_topk(5, m), 64, alpha, 1.0, "zero")["penalty"]
    np.testing.assert_allclose(got, want, atol=1e-9)


@pytest.mark.parametrize("tail,tau", [("bucket", 1.0), ("renormalize", 0.5), ("renormalize", 1.0)])
def test_tails_that_keep_the_optimum_at_the_teacher_cost_nothing(tail, tau):
    got = op.summarize(_flat_topk(4, 0.4), 100, 0.9, tau, tail)
    assert got["penalty_nats"] == 0.0 and not got["warn"]


def test_bucket_tau_not_one_is_zero_at_the_estimate_and_bounded_otherwise():
    got = op.summarize(np.log(np.array([[0.5, 0.2, 0.1]])), 50, 0.7, 0.5, "bucket")
    assert got["penalty_nats"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < got["penalty_max_nats"] < 0.5 and got["solver_residual"] < 1e-8


def test_zero_tail_tau_half_matches_brute_force_grid():
    """K = 1 + tail: two classes, one free parameter; the objective is written
    from its definition and minimised on a fine grid."""
    p1, v, alpha, tau = 0.6, 11, 0.7, 0.5
    m, t, n = 1 - p1, 1 / tau, v - 1
    c = min(p1, m)
    s = math.sqrt(n * (m / n) ** t * m * c ** (t - 1))  # the tail estimate (module docstring)
    q1 = np.linspace(1e-6, 1 - 1e-6, 2_000_001)
    big_q = 1 - q1
    nll = -(p1 * np.log(q1) + m * np.log(big_q))
    # tail="zero": teacher is 1 on its single id; the student's gathered tempered
    # log-prob there is log(q1^t / (q1^t + (Q/m)^t S)).
    kl = -np.log(q1**t / (q1**t + (big_q / m) ** t * s))
    best = q1[np.argmin((1 - alpha) * nll + alpha * tau**2 * kl)]
    want = p1 * math.log(p1 / best) + m * math.log(m / (1 - best))
    got = op.position_penalties(np.log([[p1]]), v, alpha, tau, "zero")["penalty"][0]
    assert got == pytest.approx(want, abs=1e-6)


def test_unmodelled_and_bad_settings():
    got = op.summarize(_flat_topk(4, 0.3), 100, 0.7, 1.0, "zero", "jsd")
    assert got["penalty_nats"] is None and "not modelled" in op.describe(got)
    with pytest.raises(StoreInputError, match="unknown tail"):
        op.summarize(_flat_topk(4, 0.3), 100, 0.7, 1.0, "buckett")


def test_stats_cli_penalty_on_a_store_with_a_known_optimum(tmp_path, make_schema, capsys):
    """A store whose every position holds 4 equal ids and tail m = 0.35: the CLI's
    penalty for α=0.9, tail=zero is the closed form above (0.54905)."""
    from store import create_store

    schema = make_schema("exact", T=8, K=4, V=50, layers=(), D=0, R=4)
    w = create_store(str(tmp_path / "flat"), schema, num_rows=4)
    ids = np.broadcast_to(np.arange(4, dtype=np.int32), (4, 8, 4)).copy()
    lps = np.full((4, 8, 4), math.log(0.65 / 4), np.float32)
    w.write_unit(0, tokens=np.ones((4, 8), np.int32), topk_ids=ids, topk_logprobs=lps, hidden={})
    url = str(tmp_path / "flat")
    assert main(["stats", url, "--json", "--alpha", "0.9", "--tail", "zero"]) == 0
    pen = json.loads(capsys.readouterr().out)["objective_penalty"]
    # Stored as float16: m is 0.35 to ~1e-4, which moves the penalty by < 1e-3.
    assert pen["positions"] == 32 and pen["penalty_nats"] == pytest.approx(0.549054, abs=1e-3)
    assert pen["warn"]
    assert main(["stats", url, "--alpha", "0.7"]) == 0
    assert "tail=bucket): 0.0000" in capsys.readouterr().out
    assert main(["stats", url, "--tail", "zero"]) == 2
    assert "need --alpha" in capsys.readouterr().err
