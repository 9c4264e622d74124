"""model_io: save/load round trip, fingerprint, and clear errors for bad checkpoints."""

import json

import jax
import numpy as np
import pytest

from trainer.model import gemma3 as model
from trainer.model import model_config, model_io

# Orbax leaves its own failed read coroutines un-awaited after it raises on
# corrupt data (the error we test); their GC-time noise is not ours to assert on.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def small():
    cfg = model_config.get_config("tiny", num_layers=2, vocab_size=64)
    params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    return cfg, params


def test_roundtrip_preserves_everything(small, tmp_path):
    cfg, params = small
    fp = model_io.save_model(tmp_path / "ckpt", cfg, params, metadata={"step": 7})
    cfg2, params2, metadata = model_io.load_model(tmp_path / "ckpt")
    assert cfg2 == cfg and model_io.load_config(tmp_path / "ckpt") == cfg
    assert metadata == {"step": 7, "fingerprint": fp}
    assert jax.tree_util.tree_structure(params2) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        assert isinstance(b, jax.Array) and b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert model_io.fingerprint(params2) == fp


def test_fingerprint_sensitive_to_values_and_names(small):
    _, params = small
    fp = model_io.fingerprint(params)
    assert fp == model_io.fingerprint(jax.tree_util.tree_map(np.asarray, params))
    bumped = {**params, "final_norm": params["final_norm"].at[0].add(1e-6)}
    assert model_io.fingerprint(bumped) != fp
    renamed = {**params, "final_normx": params["final_norm"]}
    del renamed["final_norm"]
    assert model_io.fingerprint(renamed) != fp


def test_missing_checkpoint(tmp_path):
    with pytest.raises(model_io.ModelIOError, match="does not exist; pass the directory"):
        model_io.load_model(tmp_path / "nope")


def test_incomplete_checkpoint(small, tmp_path):
    cfg, params = small
    model_io.save_model(tmp_path / "ckpt", cfg, params)
    (tmp_path / "ckpt" / "metadata.json").unlink()
    with pytest.raises(model_io.ModelIOError, match=r"incomplete \(missing \['metadata.json'\]\)"):
        model_io.load_model(tmp_path / "ckpt")


def test_corrupt_config_and_params(small, tmp_path):
    cfg, params = small
    model_io.save_model(tmp_path / "a", cfg, params)
    (tmp_path / "a" / "config.json").write_text(json.dumps({"d_model": -1}))
    with pytest.raises(model_io.ModelIOError, match="unreadable config.json"):
        model_io.load_model(tmp_path / "a")
    model_io.save_model(tmp_path / "b", cfg, params)
    for f in (tmp_path / "b" / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(model_io.ModelIOError, match="cannot read params"):
        model_io.load_model(tmp_path / "b")


def test_refuses_overwrite_unless_asked(small, tmp_path):
    cfg, params = small
    model_io.save_model(tmp_path / "ckpt", cfg, params)
    with pytest.raises(model_io.ModelIOError, match=r"convert --overwrite; model_io"):
        model_io.save_model(tmp_path / "ckpt", cfg, params)
    other = jax.tree_util.tree_map(lambda x: x + 1, params)
    fp = model_io.save_model(tmp_path / "ckpt", cfg, other, overwrite=True)
    assert model_io.load_model(tmp_path / "ckpt")[2]["fingerprint"] == fp


def test_metadata_must_be_json(small, tmp_path):
    cfg, params = small
    with pytest.raises(model_io.ModelIOError, match="not JSON-serialisable"):
        model_io.save_model(tmp_path / "ckpt", cfg, params, metadata={"x": object()})


def test_numpy_saved_tree_loads_as_jax_arrays(small, tmp_path):
    """convert saves numpy trees; load_model must hand back jax arrays all the same."""
    cfg, params = small
    numpy_params = jax.tree_util.tree_map(np.asarray, params)
    fp = model_io.save_model(tmp_path / "ckpt", cfg, numpy_params)
    _, loaded, metadata = model_io.load_model(tmp_path / "ckpt")
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(loaded))
    assert fp == metadata["fingerprint"] == model_io.fingerprint(params)


def test_load_into_shardings(small, tmp_path):
    """Arrays go straight into a given layout (8 simulated CPU devices, tests/conftest.py)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    cfg, params = small
    model_io.save_model(tmp_path / "ckpt", cfg, params)
    mesh = Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), params)
    shardings["embedding"] = NamedSharding(mesh, P("fsdp", None))
    _, loaded, _ = model_io.load_model(tmp_path / "ckpt", shardings=shardings)
    assert loaded["embedding"].sharding == shardings["embedding"]
    np.testing.assert_array_equal(loaded["embedding"], params["embedding"])
    with pytest.raises(model_io.ModelIOError, match="shardings tree does not match"):
        model_io.load_model(tmp_path / "ckpt", shardings={"embedding": shardings["embedding"]})


def test_params_disagreeing_with_config(small, tmp_path):
    cfg, params = small
    model_io.save_model(tmp_path / "ckpt", cfg, params)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["mlp_dim"] = 96
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(model_io.ModelIOError, match="cannot read params"):
        model_io.load_model(tmp_path / "ckpt")


def test_relative_paths_resolve_against_the_current_directory(small, tmp_path, monkeypatch):
    """Orbax accepts absolute paths only; save/load resolve relative ones themselves."""
    cfg, params = small
    monkeypatch.chdir(tmp_path)
    fp = model_io.save_model("ckpt/rel", cfg, params)
    assert (tmp_path / "ckpt" / "rel" / "metadata.json").exists()
    assert model_io.load_model("ckpt/rel")[2]["fingerprint"] == fp
    assert model_io.load_config("./ckpt/../ckpt/rel") == cfg
