"""k=0 with named layers: the activations alone (an OPRD rollout store), no unembedding.

The teacher runs only its blocks up to the deepest named layer; the activations must be the
ones a full extraction (top-k and all blocks) returns, bit for bit.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import teacher_dump
from trainer.model import model_config
from trainer.model.errors import ConfigError


def test_hidden_only_equals_the_full_extractions_activations(make_params):
    cfg = model_config.get_config("tiny-7", vocab_size=256)
    params = make_params(cfg, 0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 24), dtype=np.int32))
    only_fn = teacher_dump.make_extract_fn(cfg, k=0, layers=(2, 5))
    only = jax.device_get(only_fn(params, tokens))
    assert set(only) == {"hidden"} and set(only["hidden"]) == {2, 5}
    full_fn = teacher_dump.make_extract_fn(cfg, k=4, layers=(2, 5))
    full = jax.device_get(full_fn(params, tokens))
    # No unembedding: no [..., V] array in the compiled step (the full one has its tiles).
    logits_V = re.compile(r"x256x(f32|bf16)>")
    assert logits_V.search(full_fn.lower(params, tokens).as_text())
    assert not logits_V.search(only_fn.lower(params, tokens).as_text())
    for layer in (2, 5):
        np.testing.assert_array_equal(only["hidden"][layer], full["hidden"][layer])
    assert np.abs(only["hidden"][5]).max() > 0


def test_k_zero_without_any_signal_is_refused():
    cfg = model_config.get_config("tiny", vocab_size=256, num_layers=2)
    for kwargs in (dict(k=0, layers=()), dict(k=0)):  # The default layer is not named.
        with pytest.raises(ConfigError, match=r"k=0 is outside \[1, vocab_size=256\]"):
            teacher_dump.make_extract_fn(cfg, **kwargs)
