"""Shared fixtures of the teacher_dump tests: one tiny saved teacher."""
import jax
import pytest

from trainer import model, model_config, model_io


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """(path, fingerprint) of a saved 2-layer, V=256 teacher."""
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    params = model.init_params(cfg, jax.random.PRNGKey(3))
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    fingerprint = model_io.save_model(str(path), cfg, params)
    return str(path), fingerprint
