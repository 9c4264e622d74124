"""Model checkpoints: Orbax for the params, JSON for the config and metadata.

Layout of a model checkpoint directory (local path or any `etils.epath` URL;
a relative local path is resolved against the current directory, because
Orbax accepts absolute paths only):

    PATH/params/         Orbax StandardCheckpointer tree (fp32 arrays)
    PATH/config.json     ModelConfig.to_dict()
    PATH/metadata.json   user metadata + "fingerprint"; written LAST, so its
                         presence marks a complete checkpoint

The fingerprint is a sha256 over every param's path, dtype, shape and bytes in
a fixed order: two checkpoints with the same fingerprint hold the same model,
which is what the store records as the teacher identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from trainer.model import gemma3 as model
from trainer.model import layout
from trainer.model.errors import ModelIOError
from trainer.model.model_config import ModelConfig

_PARAMS_DIR = layout.PARAMS_DIR
_CONFIG_FILE = layout.CONFIG_FILE
_METADATA_FILE = layout.METADATA_FILE
_REWRITE_HINT = layout.REWRITE_HINT


def fingerprint(params) -> str:
    """sha256 hex digest over (path, dtype, shape, bytes) of every param, path-sorted."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_model(
    path, cfg: ModelConfig, params, metadata: dict[str, Any] | None = None, overwrite: bool = False
) -> str:
    """Writes a model checkpoint.

    Args:
        path: target directory (created).
        cfg: the model config.
        params: param tree (arrays); saved as fp32 as given.
        metadata: JSON-serialisable extras (e.g. tokenizer sha, training step).
        overwrite: replace an existing checkpoint at `path`.

    Returns:
        The params fingerprint (also stored as metadata["fingerprint"]).

    Raises:
        ModelIOError: `path` exists and overwrite is False, or metadata is not JSON.
    """
    root = resolve_path(path)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ModelIOError(
                f"model checkpoint path {root} already exists and is not empty; "
                f"choose a new path or replace it (teacher_dump.convert "
                f"--overwrite; model_io.save_model(..., overwrite=True))"
            )
        root.rmtree()
    metadata = dict(metadata or {})
    fp = fingerprint(params)
    metadata["fingerprint"] = fp
    try:
        metadata_json = json.dumps(metadata, indent=2, sort_keys=True)
    except TypeError as e:
        raise ModelIOError(
            f"model metadata is not JSON-serialisable ({e}); pass plain dicts/lists/str/numbers"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    # Only the calling process takes part (in a multi-process run, process 0
    # writes the gathered host params alone): no barrier waits for the others.
    me = jax.process_index()
    only_me = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    checkpointer = ocp.StandardCheckpointer(multiprocessing_options=only_me)
    checkpointer.save(root / _PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (root / _CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    (root / _METADATA_FILE).write_text(metadata_json)
    return fp


def resolve_path(path) -> epath.Path:
    """`path` as an absolute epath: URLs (gs://, s3://, ...) as given, local paths
    (relative to the current directory, `~` expanded) made absolute."""
    text = os.fspath(path)
    if "://" in text:
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def load_config(path) -> ModelConfig:
    """Reads only the config of a model checkpoint (cheap; no arrays)."""
    root = _checked_root(path)
    try:
        text = (root / _CONFIG_FILE).read_text()
    except OSError as e:
        raise ModelIOError(
            f"model checkpoint {root} has an unreadable {_CONFIG_FILE} ({e}); {_REWRITE_HINT}"
        ) from None
    return layout.parse_config(text, root)


def load_model(path, shardings=None) -> tuple[ModelConfig, Any, dict[str, Any]]:
    """Reads a checkpoint written by `save_model`.

    The params are restored against the shapes `model.init_params` gives for
    the stored config, so a params/config disagreement is an error here rather
    than a shape failure deep inside the forward pass.

    Args:
        path: checkpoint directory.
        shardings: None (all arrays on the default device), one
            `jax.sharding.Sharding` for every array, or a tree of them matching
            the params (e.g. from the trainer's logical-axis mapping): arrays are
            then read straight into that layout.

    Returns:
        (cfg, params, metadata); params as fp32 jax arrays.

    Raises:
        ModelIOError: missing, incomplete or unreadable checkpoint.
    """
    root = _checked_root(path)
    cfg = load_config(root)
    try:
        metadata = json.loads((root / _METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelIOError(
            f"model checkpoint {root} has an unreadable {_METADATA_FILE} ({e}); {_REWRITE_HINT}"
        ) from None
    target = _abstract_params(cfg, shardings)
    try:
        params = ocp.StandardCheckpointer().restore(root / _PARAMS_DIR, target)
    # Orbax/TensorStore report unreadable or mismatching data (bad bytes, a
    # shape that disagrees with config.json, a missing array) as ValueError,
    # and file access failures as OSError; anything else is a bug and propagates.
    except (ValueError, OSError) as e:
        raise ModelIOError(
            f"cannot read params of model checkpoint {root} "
            f"({type(e).__name__}: {str(e)[:200]}); {_REWRITE_HINT}"
        ) from None
    return cfg, params, metadata


def _abstract_params(cfg: ModelConfig, shardings):
    """ShapeDtypeStructs of `cfg`'s params carrying the requested shardings."""
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0)))
    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree_util.tree_map(lambda _: shardings, shapes)
    try:
        return jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
        )
    except ValueError as e:
        raise ModelIOError(
            f"shardings tree does not match the param tree ({str(e)[:200]}); "
            f"pass one Sharding or a tree shaped like model.init_params"
        ) from None


def _checked_root(path) -> epath.Path:
    """The checkpoint dir, or a ModelIOError saying what is missing."""
    root = resolve_path(path)
    if not root.exists():
        raise ModelIOError(
            f"model checkpoint {root} does not exist; pass the directory written "
            f"by model_io.save_model or teacher_dump.convert"
        )
    missing = [n for n in (_CONFIG_FILE, _PARAMS_DIR, _METADATA_FILE) if not (root / n).exists()]
    if missing:
        raise ModelIOError(
            f"model checkpoint {root} is incomplete (missing {missing}); it was "
            f"not fully written -- re-run the export/convert that makes it"
        )
    return root
