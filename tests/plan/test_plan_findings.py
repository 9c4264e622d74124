"""What the compiler found (docs/tpu.md), kept fixed: checked with the CPU compiler, no libtpu."""

import jax
import jax.numpy as jnp

from trainer.model import gemma3 as model
from trainer.model import model_config


def test_a_captured_layer_does_not_copy_the_layer_weights():
    # forward() with a captured layer runs the blocks as two scans. Slicing the stacked
    # params per scan made XLA copy every layer weight (CPU: temporaries grew by exactly
    # the layers' bytes; TPU, gemma3-4b dump: 7.00 GiB per chip). A split forward must
    # need no more temporaries than the unsplit one, plus a little for the captured layer.
    cfg = model_config.get_config("tiny", vocab_size=512, d_model=256, mlp_dim=2048)
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.key(0)))
    layer_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes["layers"]))
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)

    def temp(capture):
        fn = jax.jit(
            lambda p, t: model.forward(p, t, cfg, capture_layers=capture).final_hidden_BxTxD
        )
        return fn.lower(shapes, tokens).compile().memory_analysis().temp_size_in_bytes

    whole, split = temp(()), temp((2,))
    assert split - whole < layer_bytes // 100, (whole, split, layer_bytes)
