"""Model configs, forward-pass modes (scan / unrolled / remat / num_blocks / capture) and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import gemma3 as model
from trainer.model import model_config

_T = 20  # > 2 * window of "tiny-7" (4), so sliding-window masking is exercised.
# Jitted once per config: eager op-by-op dispatch would dominate the test time.
_forward = jax.jit(model.forward, static_argnames=("cfg", "capture_layers", "num_blocks"))


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config.get_config("tiny-7")
    params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, _T), 0, cfg.vocab_size)
    return cfg, params, tokens


# --------------------------------------------------------------------------- configs


def test_named_configs_and_overrides():
    cfg = model_config.get_config("gemma3-4b", vocab_size=32000)
    assert (
        cfg.num_layers,
        cfg.d_model,
        cfg.mlp_dim,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.sliding_window,
        cfg.rope_global_scale,
    ) == (34, 2560, 10240, 8, 4, 256, 1024, 8.0)
    assert cfg.vocab_size == 32000 and cfg.name == "gemma3-4b"
    assert model_config.get_config("gemma3-1b").global_layers[:6] == (False,) * 5 + (True,)
    assert model_config.get_config("tiny", num_layers=2).num_layers == 2
    assert set(model_config.config_names()) >= {"gemma3-270m", "gemma3-1b", "gemma3-4b", "tiny"}


def test_config_dict_roundtrip():
    cfg = model_config.get_config("tiny", dtype="bfloat16", remat=True)
    assert model_config.ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=0), "d_model"),
        (dict(num_heads=3, num_kv_heads=2), "not divisible"),
        (dict(dtype="float16"), "dtype"),
        (dict(head_dim=15), "head_dim"),
        (dict(attention_impl="flash"), "attention_impl"),
        (dict(rope_global_scale=0.0), "rope_global_scale"),
        (dict(num_layerz=3), "unknown model config fields"),
        (dict(remat="yes"), "remat"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(model_config.ConfigError, match=match):
        model_config.get_config("tiny", **kwargs)


def test_unknown_config_name():
    with pytest.raises(ValueError, match="unknown model config 'gemma9'; use one of"):
        model_config.get_config("gemma9")


@pytest.mark.parametrize(
    "name, expected_millions", [("gemma3-270m", 100.3), ("gemma3-1b", 697.9), ("gemma3-4b", 3209.0)]
)
def test_backbone_param_counts_under_eval_shape(name, expected_millions):
    """docs/DESIGN.md §2: with V = 32k the backbones are ~100M / ~698M / ~3.21B."""
    cfg = model_config.get_config(name, vocab_size=32000)
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0)))
    backbone = model.count_params(shapes, include_embedding=False)
    assert abs(backbone / 1e6 - expected_millions) < 0.1
    assert model.count_params(shapes) - backbone == 32000 * cfg.d_model


def test_logical_axes_match_param_tree(tiny):
    cfg, params, _ = tiny
    axes = model.param_logical_axes(cfg)
    is_axes = lambda x: isinstance(x, tuple)  # noqa: E731
    assert jax.tree_util.tree_structure(axes, is_leaf=is_axes) == jax.tree_util.tree_structure(
        params
    )
    for ax, p in zip(
        jax.tree_util.tree_leaves(axes, is_leaf=is_axes), jax.tree_util.tree_leaves(params)
    ):
        assert len(ax) == p.ndim and p.dtype == jnp.float32
    assert model.embedding_table(params).shape == (cfg.vocab_size, cfg.d_model)


# --------------------------------------------------------------------------- forward modes


@pytest.fixture(scope="module")
def reference(tiny):
    """Scanned forward with captures after blocks 3 and 6 (6 is the global block)."""
    cfg, params, tokens = tiny
    return _forward(params, tokens, cfg, capture_layers=(3, 6))


def test_unrolled_matches_scan(tiny, reference):
    cfg, params, tokens = tiny
    out = _forward(params, tokens, cfg.replace(scan_layers=False), capture_layers=(3, 6))
    np.testing.assert_allclose(out.final_hidden_BxTxD, reference.final_hidden_BxTxD, atol=1e-5)
    for l in (3, 6):
        np.testing.assert_allclose(out.captured[l], reference.captured[l], atol=1e-5)


def test_num_blocks_matches_full_capture(tiny, reference):
    cfg, params, tokens = tiny
    half = _forward(params, tokens, cfg, capture_layers=(3,), num_blocks=3)
    assert half.final_hidden_BxTxD is None and set(half.captured) == {3}
    np.testing.assert_allclose(half.captured[3], reference.captured[3], atol=1e-5)
    # Capturing must not change the result it splits.
    plain = _forward(params, tokens, cfg)
    np.testing.assert_allclose(plain.final_hidden_BxTxD, reference.final_hidden_BxTxD, atol=1e-5)


def test_gradients_scan_remat_vs_unrolled(tiny):
    """2 blocks (local, global) keep compile time low but still cross the cond."""
    cfg, params, tokens = tiny
    cfg = cfg.replace(num_layers=2, global_every=2)
    params = {**params, "layers": jax.tree_util.tree_map(lambda x: x[:2], params["layers"])}

    def loss(p, c):
        out = model.forward(p, tokens, c, capture_layers=(1,))
        logits = model.unembed(p, out.final_hidden_BxTxD, c)
        return jnp.mean(jax.nn.logsumexp(logits, -1)) + jnp.mean(out.captured[1] ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_scan = grad(params, cfg.replace(remat=True))
    g_loop = grad(params, cfg.replace(scan_layers=False))
    for a, b in zip(jax.tree_util.tree_leaves(g_scan), jax.tree_util.tree_leaves(g_loop)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_causal_and_sliding_window(tiny, reference):
    """Changing token t changes nothing before t; a local-only model forgets beyond its reach."""
    cfg, params, tokens = tiny
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % cfg.vocab_size)
    a = reference.final_hidden_BxTxD
    b = _forward(params, changed, cfg, capture_layers=(3, 6)).final_hidden_BxTxD
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3
    # 2 local blocks of window 4 see back at most 2 * 3 = 6 positions.
    local = cfg.replace(num_layers=2)
    local_params = {**params, "layers": jax.tree_util.tree_map(lambda x: x[:2], params["layers"])}
    a = _forward(local_params, tokens, local).final_hidden_BxTxD
    b = _forward(local_params, changed, local).final_hidden_BxTxD
    assert np.abs(a[:, 10:17] - b[:, 10:17]).max() > 1e-3
    np.testing.assert_array_equal(a[:, 17:], b[:, 17:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(capture_layers=(0,)), r"capture layer 0 is outside \[1, 7\]"),
        (dict(capture_layers=(8,)), r"capture layer 8 is outside"),
        (dict(capture_layers=(5,), num_blocks=3), r"capture layer 5 is outside \[1, 3\]"),
        (dict(num_blocks=0), r"num_blocks=0 is outside \[1, 7\]"),
        (dict(num_blocks=9), r"num_blocks=9"),
    ],
)
def test_bad_layer_arguments(tiny, kwargs, match):
    cfg, params, tokens = tiny
    with pytest.raises(model.ModelInputError, match=match):
        model.forward(params, tokens, cfg, **kwargs)


def test_tokens_must_be_2d(tiny):
    cfg, params, tokens = tiny
    with pytest.raises(model.ModelInputError, match="add a batch axis"):
        model.forward(params, tokens[0], cfg)


def test_params_config_mismatch(tiny):
    cfg, params, tokens = tiny
    with pytest.raises(model.ModelInputError, match=r"param layers/attn/q has shape .* needs"):
        model.forward(params, tokens, cfg.replace(num_layers=6))
    with pytest.raises(model.ModelInputError, match=r"param embedding has shape"):
        model.forward(params, tokens, cfg.replace(vocab_size=100))
