"""Shared fixtures of the teacher_dump tests: one tiny saved teacher."""

import jax
import numpy as np
import pytest

from trainer.model import gemma3 as model
from trainer.model import model_config, model_io


def random_params(cfg, seed):
    """Random fp32 params of the model's tree, made in numpy (no XLA compile).

    Norm weights are random too (init_params zeros them), so Gemma's (1 + w)
    is exercised.
    """
    shapes = jax.eval_shape(lambda key: model.init_params(cfg, key), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    fan_in = {"down": cfg.mlp_dim, "o": cfg.num_heads * cfg.head_dim}

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        last = name.split("'")[-2]
        std = 0.3 if "norm" in name else fan_in.get(last, cfg.d_model) ** -0.5
        return (std * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="session")
def make_params():
    """The random_params function, for test modules."""
    return random_params


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """(path, fingerprint) of a saved 2-layer, V=256 teacher."""
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = random_params(cfg, 3)
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    fingerprint = model_io.save_model(str(path), cfg, params)
    return str(path), fingerprint
