"""Device mesh, logical-axis → mesh-axis rules, and multi-host start-up.

The model names each parameter dimension with a logical axis
(`model.param_logical_axes`); this module is the ONE place that maps those
names to mesh axes. Mesh axes: `data` (pure data parallel), `fsdp` (batch
split AND parameters sharded, ZeRO-3 style), `tensor` (optional model
parallel over heads / MLP / vocab). The batch is split over `data` × `fsdp`.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over both.

# Logical axis → mesh axis (None: replicated). Every name a param may use must
# be listed: an unknown name is a bug in the model or here, not a silent copy.
LOGICAL_RULES: dict[str, str | None] = {
    "embed": "fsdp",        # d_model: FSDP shards every matrix along it.
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": None,       # Often 1 (GQA/MQA); too small to split.
    "head_dim": None,
    "layers": None,         # Stacked scan axis; each step needs its own slice.
    "teacher_embed": None,  # Regressor output width d_T.
    "reg_hidden": "tensor",  # HLDF MLP regressor hidden width 4·d_S.
}


class MeshConfigError(ValueError):
    """Mesh sizes do not match the available devices."""


def maybe_initialize_distributed(enabled: bool) -> None:
    """Calls `jax.distributed.initialize()` for multi-host runs; no-op otherwise.

    Enabled by the config flag `distributed`, or by the environment variable
    `TRAINER_DISTRIBUTED=1` (what a cluster launcher sets); JAX then reads the
    coordinator address / process id from its usual environment (Cloud TPU,
    SLURM, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    """
    if enabled or os.environ.get("TRAINER_DISTRIBUTED") == "1":
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

    At most one size may be -1 ("all remaining devices").

    Raises:
        MeshConfigError: sizes that do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshConfigError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} have more than one "
                              f"-1; set all but one axis explicitly")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise MeshConfigError(f"{len(devices)} devices are not divisible by the fixed mesh "
                                  f"axes (product {known}); change mesh.* sizes")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise MeshConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
                              f"devices but {len(devices)} exist; set e.g. mesh.data=-1")
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(axes: tuple, shape: tuple, mesh: Mesh) -> P:
    """PartitionSpec for one array; a dim not divisible by its mesh axis is replicated.

    Replicating (rather than failing) keeps tiny test models and odd sizes such
    as 1 kv head working on any mesh; the big dims of real models divide.
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    spec = []
    for name, dim in zip(axes, shape):
        if name not in LOGICAL_RULES:
            raise ValueError(f"logical axis {name!r} has no sharding rule; add it to "
                             f"trainer.training.sharding.LOGICAL_RULES")
        mesh_axis = LOGICAL_RULES[name]
        if mesh_axis is None or mesh.shape[mesh_axis] == 1 or dim % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
    return P(*spec)


def tree_shardings(logical_tree, shape_tree, mesh: Mesh):
    """NamedShardings for a pytree of arrays given the same tree of logical axes."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)
    return jax.tree.map(
        lambda axes, arr: NamedSharding(mesh, logical_to_spec(axes, tuple(arr.shape), mesh)),
        logical_tree, shape_tree, is_leaf=is_axes)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim split over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


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
