"""What the backward pass keeps: remat policies (same gradients, fewer residuals),
legacy bool remat, and no [T, T] or fp32 activation saved per layer."""

import contextlib
import io
import re

import jax
import jax.ad_checkpoint  # noqa: F401 (print_saved_residuals)
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.model import gemma3 as model
from trainer.model import model_config

_T = 24  # Distinct from every model dim of tiny-7, so a [.., T, T] shape is recognisable.


@pytest.fixture(scope="module")
def tiny7():
    cfg = model_config.get_config("tiny-7", num_layers=2, global_every=2)  # local, global
    params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, _T), 0, cfg.vocab_size)
    return cfg, params, tokens


def _loss(params, tokens, cfg):
    out = model.forward(params, tokens, cfg, capture_layers=(1,))
    logits = model.unembed(params, out.final_hidden_BxTxD, cfg).astype(jnp.float32)
    return jnp.mean(jax.nn.logsumexp(logits, -1)) + jnp.mean(
        out.captured[1].astype(jnp.float32) ** 2
    )


def _linear_readout(params, tokens, cfg):
    """Linear in the model's outputs: every residual kept is the model's own."""
    out = model.forward(params, tokens, cfg, capture_layers=(1,))
    return jnp.sum(out.final_hidden_BxTxD.astype(jnp.float32)) + jnp.sum(
        out.captured[1].astype(jnp.float32)
    )


def _saved(cfg, params, tokens):
    """[(dtype, shape)] of what the model's backward pass keeps (jax's own report)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        jax.ad_checkpoint.print_saved_residuals(lambda p: _linear_readout(p, tokens, cfg), params)
    rows = []
    for line in text.getvalue().splitlines():
        m = re.match(r"(\w+)\[([\d,]*)\]", line)
        if m and "from the argument" not in line:
            rows.append((m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)))
    return rows


_grad = jax.jit(jax.grad(_loss), static_argnums=2)


@pytest.fixture(scope="module")
def reference_grads(tiny7):
    cfg, params, tokens = tiny7
    return _grad(params, tokens, cfg)


@pytest.mark.parametrize(
    "policy", [p.value for p in model_config.RematPolicy if p is not model_config.RematPolicy.NONE]
)
def test_every_remat_policy_gives_the_gradients_of_none(tiny7, reference_grads, policy):
    cfg, params, tokens = tiny7
    reference = reference_grads
    got = _grad(params, tokens, cfg.replace(remat=policy))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_policies_keep_fewer_activations_than_none_and_full_the_fewest(tiny7):
    cfg, params, tokens = tiny7
    cfg = cfg.replace(dtype="bfloat16")
    itemsize = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "s32": 4, "bool": 1, "pred": 1}
    # Activations only (shapes with the token axis): weights are kept by every policy.
    size = {
        p.value: sum(
            int(np.prod(s)) * itemsize[d]
            for d, s in _saved(cfg.replace(remat=p.value), params, tokens)
            if _T in s
        )
        for p in model_config.RematPolicy
    }
    assert size["full"] < min(v for k, v in size.items() if k != "full")
    assert all(v < size["none"] for k, v in size.items() if k != "none"), size


def test_backward_keeps_no_scores_and_no_fp32_activations(tiny7):
    """Attention scores/probabilities/masks ([.., T, T]) are recomputed, and bf16
    activations are not kept again as fp32 copies (RMSNorm, GeGLU, QK-norm)."""
    cfg, params, tokens = tiny7
    saved = _saved(cfg.replace(dtype="bfloat16"), params, tokens)
    assert saved, "print_saved_residuals reported nothing"
    square = [s for _, s in saved if list(s).count(_T) >= 2]
    assert not square, f"[T, T] residuals kept: {square}"
    fp32_acts = [s for d, s in saved if d == "f32" and _T in s]
    assert not fp32_acts, f"fp32 activations kept: {fp32_acts}"


def test_legacy_bool_remat_reads_as_a_policy():
    assert model_config.get_config("tiny", remat=True).remat == "full"
    assert model_config.get_config("tiny", remat=False).remat == "none"
    assert model_config.get_config("tiny", remat="True").remat == "full"  # --set model.remat=True
    old = {**model_config.get_config("tiny").to_dict(), "remat": True}  # an older export
    assert model_config.ModelConfig.from_dict(old).remat == "full"
    with pytest.raises(model_config.ConfigError, match="use one of .*'dots_no_batch'"):
        model_config.get_config("tiny", remat="some")
