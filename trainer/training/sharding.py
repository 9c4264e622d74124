"""Device mesh, logical-axis → mesh-axis rules, and host batches → global arrays.

The model names each parameter dimension with a logical axis
(`model.param_logical_axes`); this module is the ONE place that maps those
names to mesh axes. Mesh axes: `data` (pure data parallel), `fsdp` (batch
split AND parameters sharded, ZeRO-3 style), `tensor` (optional model
parallel over heads / MLP / vocab). The batch is split over `data` × `fsdp`.
Joining a multi-process run is `trainer.training.distributed`.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trainer.model import gemma3 as model
from trainer.model.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over both.

# Logical axis → mesh axis (None: replicated). Every name a param may use must
# be listed: an unknown name is a bug in the model or here, not a silent copy.
LOGICAL_RULES: dict[str, str | None] = {
    "embed": "fsdp",  # d_model: FSDP shards every matrix along it.
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": None,  # Often 1 (GQA/MQA); too small to split.
    "head_dim": None,
    "layers": None,  # Stacked scan axis; each step needs its own slice.
    "teacher_embed": None,  # Regressor output width d_T.
    "reg_hidden": "tensor",  # HLDF MLP regressor hidden width 4·d_S.
}


log = logging.getLogger(__name__)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

    At most one size may be -1 ("all remaining devices").

    Raises:
        ConfigError: sizes that do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ConfigError(
            f"mesh sizes {dict(zip(MESH_AXES, sizes))} have more than one "
            f"-1; set all but one axis explicitly"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(
                f"{len(devices)} devices are not divisible by the fixed mesh "
                f"axes (product {known}); change mesh.* sizes"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
            f"devices but {len(devices)} exist; set e.g. mesh.data=-1"
        )
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(axes: tuple, shape: tuple, mesh: Mesh, name: str = "") -> P:
    """PartitionSpec for one array; a dim not divisible by its mesh axis is replicated.

    Replicating (rather than failing) keeps tiny test models and odd sizes
    working on any mesh, but it costs memory (every device holds the whole
    dim), so each such dim is logged as a warning naming the array.

    Args:
        axes: logical axis name per dimension.
        shape: the array's shape.
        mesh: the device mesh.
        name: the array's name for the warning (e.g. "layers/attn/q").
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    spec = []
    for axis, dim in zip(axes, shape):
        if axis not in LOGICAL_RULES:
            raise ValueError(
                f"logical axis {axis!r} has no sharding rule; add it to "
                f"trainer.training.sharding.LOGICAL_RULES"
            )
        mesh_axis = LOGICAL_RULES[axis]
        if mesh_axis is None or mesh.shape[mesh_axis] == 1:
            spec.append(None)
        elif dim % mesh.shape[mesh_axis]:
            log.warning(
                "sharding: %s dim %r=%d is not divisible by mesh axis %r=%d; "
                "replicated on every device instead",
                name or "array",
                axis,
                dim,
                mesh_axis,
                mesh.shape[mesh_axis],
            )
            spec.append(None)
        else:
            spec.append(mesh_axis)
    return P(*spec)


def tree_shardings(logical_tree, shape_tree, mesh: Mesh):
    """NamedShardings for a pytree of arrays given the same tree of logical axes."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)

    def one(path, axes, arr):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return NamedSharding(mesh, logical_to_spec(axes, tuple(arr.shape), mesh, name))

    return jax.tree_util.tree_map_with_path(one, logical_tree, shape_tree, is_leaf=is_axes)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim split over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def activation_sharding(mesh: Mesh):
    """Context in which a traced forward keeps [B, T, D] activations batch-sharded.

    Use around the loss while a step is traced (see `gemma3.activation_sharding`
    for why XLA needs telling).
    """
    return model.activation_sharding(batch_sharding(mesh, 3))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated (scalars, RNG keys, step counters)."""
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (data × fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch_from_host(batch: dict, mesh: Mesh) -> dict:
    """Assembles each host's numpy rows into global arrays sharded over the batch axes."""
    out = {}
    for name, local in batch.items():
        sharding = batch_sharding(mesh, local.ndim)
        if jax.process_count() == 1:
            out[name] = jax.device_put(local, sharding)
        else:
            out[name] = jax.make_array_from_process_local_data(sharding, local)
    return out
