"""Steps from the one budget match docs/DESIGN.md §1's formulas (counts from the model tree)."""

import math

import jax
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model import gemma3 as model
from trainer.training import loop as train
from trainer.training import methods


def _counts(config):
    cfg = train.model_config_from(config)
    params = model.init_params(cfg, jax.random.key(0))
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    n = size(params) - size(params["embedding"])
    half = cfg.num_layers // 2
    n_half = size(jax.tree.map(lambda x: x[:half], params["layers"]))
    d, v, d_t = cfg.d_model, cfg.vocab_size, config.teacher.d_model
    n_mlp = d * 4 * d + 4 * d + 4 * d * d_t + d_t
    return n, n_half, d, v, d_t, n_mlp


@pytest.mark.parametrize("method", ["nll", "kd", "hldc", "hldf"])
@pytest.mark.parametrize("unit, value", [("flops", 3.3e12), ("ot", 0.5)])
def test_steps_match_formulas(method, unit, value):
    config = tl.tiny_config(
        method, "/s", "/r", **{"budget.unit": unit, "budget.value": value, "hldf.p1": 0.04}
    )
    n, n_half, d, v, d_t, n_mlp = _counts(config)
    c_data = 6 * n + 6 * d * v
    budget = value if unit == "flops" else value * 20 * n * c_data
    tokens = config.data.batch_size * config.data.seq_len
    plans = train.plan_phases(config, train.model_config_from(config), methods.phases(config, 4))
    steps = [p.num_steps for p in plans]
    if method in ("nll", "kd"):
        assert steps == [math.floor(budget / (c_data * tokens))]
    elif method == "hldc":
        assert steps == [math.floor(budget / ((c_data + 6 * d * d_t) * tokens))]
    else:
        c_ht = 6 * n_half + 6 * n_mlp
        assert steps == [
            math.floor(0.04 * budget / (c_ht * tokens)),
            math.floor(0.96 * budget / (c_data * tokens)),
        ]
        assert plans[0].phase.num_blocks == 2 and plans[1].phase.num_blocks is None
    used = sum(p.num_steps * p.flops_per_token * tokens for p in plans)
    assert used <= budget
