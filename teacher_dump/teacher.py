"""A loaded teacher: config, device-resident params, fingerprint.

The fingerprint (sha256 over the params, written by model_io.save_model) goes
into the store manifest so a store is tied to the exact weights that made it.
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from teacher_dump import encode, extract, loop
from trainer.model import model_config, model_io
from trainer.model.errors import ConfigError, ModelIOError


@dataclasses.dataclass(eq=False)
class Teacher:
    """A teacher ready for extraction.

    Attributes:
        cfg: the model config (compute dtype may be overridden at load time).
        params: the param pytree, on the default device or replicated over
            the mesh.
        fingerprint: sha256 of the checkpoint's params (None: built in
            memory, not loaded from a checkpoint).
        path: where it was loaded from ("" if built in memory).
        mesh: a 1-D ("data",) mesh for data-parallel extraction, or None.
    """

    cfg: model_config.ModelConfig
    params: Any
    fingerprint: str | None = None
    path: str = ""
    mesh: jax.sharding.Mesh | None = None

    @property
    def num_devices(self) -> int:
        """Devices a batch is split over (1 without a mesh)."""
        return 1 if self.mesh is None else self.mesh.size

    def put_tokens(self, tokens_BxT):
        """Places a token batch: split over the mesh's "data" axis if any.

        Without a mesh the numpy batch is returned as is (jit copies it to the
        default device).
        """
        if self.mesh is None:
            return tokens_BxT
        return jax.device_put(tokens_BxT, NamedSharding(self.mesh, P("data")))

    def extract_fn(
        self,
        k: int = 128,
        layers: Sequence[int] | None = None,
        encode_for=None,
        encode_profile=None,
        **options,
    ) -> extract.ExtractFn:
        """The jitted extraction step for these options (cached per config).

        Args:
            k, layers: see make_extract_fn.
            encode_for: a store's StoreSchema: the step also encodes the signal into
                that store's arrays on the device (teacher_dump.encode).
            encode_profile: the store's store.profiles Profile (profiles.for_store;
                None: the schema's profile as written today).
            **options: top_p, token_tile, hidden_dtype, rank_float32, samples.

        Returns:
            fn(params, tokens_BxT, rows_B=None) -> signal dict (encode_for:
            encode.encode_signal's {"arrays", "finite"}).
        """
        fn = extract.make_extract_fn(self.cfg, k=k, layers=layers, **options)
        return (
            fn
            if encode_for is None
            else encode.make_encoded_extract_fn(fn, encode_for, encode_profile)
        )

    def extract(self, tokens_NxT, batch_size: int = 8, **options) -> dict:
        """The signal of all rows as one numpy dict (extract_rows, concatenated).

        A method rather than attribute access so that it also works through
        Beam's multi-process proxy (which forwards method calls only).

        Args:
            tokens_NxT: int token rows, N ≥ 1.
            batch_size: rows per device call.
            **options: k, layers, top_p, token_tile, hidden_dtype, samples,
                row_ids (extract_rows).

        Returns:
            {"topk_ids": [N,T,K], "topk_logprobs": [N,T,K], "hidden": {l: [N,T,D]}}
            (plus sampled_ids / sampled_counts / sampled_logprobs [N,T,S] with
            samples > 0).
        """
        return loop.concat_batches(
            loop.extract_rows(self, tokens_NxT, batch_size=batch_size, **options)
        )


def cast_for_inference(params, cfg):
    """Pre-casts the matmul weights to the compute dtype (norm weights stay fp32).

    The forward casts every weight to the compute dtype anyway, so the signal
    is bit-identical; pre-casting once halves the teacher's device memory under
    bf16 and removes the per-step casts. Norm weights stay fp32 because the
    model applies them in fp32 (1 + w).

    Args:
        params: fp32 param tree.
        cfg: model config (its dtype is the target).

    Returns:
        The param tree, matmul weights in cfg.dtype.
    """
    dtype = np.dtype(jax.numpy.dtype(cfg.dtype))
    if dtype == np.float32:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, a: a if "norm" in jax.tree_util.keystr(path) else a.astype(dtype), params
    )


def local_devices(num_devices: int | None) -> list:
    """The first num_devices local devices (None: all of them).

    Raises:
        ConfigError: more devices asked for than this process has.
    """
    available = jax.local_devices()
    if num_devices is None:
        return available
    if (
        isinstance(num_devices, bool)
        or not isinstance(num_devices, int)
        or not 1 <= num_devices <= len(available)
    ):
        raise ConfigError(
            f"num_devices={num_devices!r} but this process has "
            f"{len(available)} {available[0].platform} device(s): pass a "
            f"number in [1, {len(available)}] or None for all"
        )
    return available[:num_devices]


def place_params(params, devices: Sequence[jax.Device] | None = None):
    """Puts params on one device, or replicates them over a data mesh.

    Args:
        params: param pytree (host or device arrays).
        devices: None or one device: the default device. Several: every
            device holds a full copy and batches are split over them.

    Returns:
        (params, mesh or None).
    """
    devices = list(devices or [])
    if len(devices) <= 1:
        return jax.device_put(params, devices[0] if devices else None), None
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    return jax.device_put(params, NamedSharding(mesh, P())), mesh


def load_teacher(
    path: str, dtype: str | None = None, devices: Sequence[jax.Device] | None = None
) -> Teacher:
    """Loads a teacher checkpoint written by model_io.save_model (or convert).

    Args:
        path: checkpoint directory (local path or URL Orbax can read).
        dtype: optional compute dtype override ("bfloat16" / "float32");
            params stay fp32.
        devices: devices for data-parallel extraction (default: the default
            device only).

    Returns:
        A Teacher with params on the default device.

    Raises:
        ModelIOError: the path is missing or is not a readable checkpoint.
        model_config.ConfigError: a bad dtype override.
    """
    path = os.fspath(path)
    try:
        cfg, params, metadata = model_io.load_model(path)
    except model_io.ModelIOError as err:  # already names the path and the fix
        raise ModelIOError(f"teacher: {err}") from err
    if "fingerprint" not in metadata:
        # model_io.save_model always writes it; a store must not record a
        # teacher it cannot identify.
        raise ModelIOError(
            f"teacher {path}: metadata.json has no params fingerprint; re-save the "
            f"checkpoint with model_io.save_model (or teacher_dump.convert for "
            f"Hugging Face weights)"
        )
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    params, mesh = place_params(cast_for_inference(params, cfg), devices)
    return Teacher(
        cfg=cfg, params=params, fingerprint=str(metadata["fingerprint"]), path=path, mesh=mesh
    )
