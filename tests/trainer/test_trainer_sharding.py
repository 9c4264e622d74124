"""trainer.training.sharding: mesh construction and logical-axis rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from trainer.model import gemma3 as model
from trainer.model import model_config
from trainer.model.errors import ConfigError
from trainer.training import sharding


def test_mesh_fills_minus_one():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=1)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sharding.batch_divisor(mesh) == 8


@pytest.mark.parametrize(
    "sizes, match",
    [
        ((3, 1, 1), "needs 3 devices"),
        ((-1, -1, 1), "more than one -1"),
        ((-1, 3, 1), "not divisible"),
    ],
)
def test_bad_mesh(sizes, match):
    with pytest.raises(ConfigError, match=match):
        sharding.make_mesh(*sizes)


def test_rules_cover_the_model_and_replicate_indivisible_dims():
    mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
    cfg = model_config.get_config("tiny")
    shapes = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
    shardings = sharding.tree_shardings(model.param_logical_axes(cfg), shapes, mesh)
    assert shardings["embedding"].spec == P(None, "fsdp")  # V=512, D=64 over fsdp
    assert shardings["layers"]["attn"]["q"].spec == P(None, "fsdp", None, None)
    # A dimension of 3 cannot be split 8 ways: replicated, not an error.
    assert sharding.logical_to_spec(("embed",), (3,), mesh) == P(None)


def test_indivisible_dim_is_said_out_loud(caplog):
    mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
    axes = {"ok": ("embed", "vocab"), "odd": {"w": ("vocab", "embed")}}
    shapes = {
        "ok": jax.ShapeDtypeStruct((16, 5), "float32"),
        "odd": {"w": jax.ShapeDtypeStruct((5, 12), "float32")},
    }
    with caplog.at_level("WARNING", logger="trainer.training.sharding"):
        out = sharding.tree_shardings(axes, shapes, mesh)
    assert out["ok"].spec == P("fsdp", None) and out["odd"]["w"].spec == P(None, None)
    # One line, naming the param, the dim and the mesh axis; none for the divisible one.
    assert [r.getMessage() for r in caplog.records] == [
        "sharding: odd/w dim 'embed'=12 is not divisible by mesh axis 'fsdp'=8; "
        "replicated on every device instead"
    ]


def test_unknown_logical_axis_is_an_error():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_spec(("bogus",), (8,), mesh)
