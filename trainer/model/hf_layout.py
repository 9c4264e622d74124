"""The one name/layout table between our param tree and Hugging Face Gemma 3 tensors.

Both directions use it: `teacher_dump.convert` (HF -> ours) and
`trainer.model.hf_export` (ours -> HF). A tensor is added or renamed here only.

HF `nn.Linear` weights are [out, in]; ours keep the input dims first and split
the head dims, e.g. q [D, N, H] is HF q_proj [N*H, D]. So for a projection
with `in_dims` leading input dims: ours = hf.T.reshape(ours_shape) and
hf = ours.reshape(prod(in dims), -1).T. Norm weights and the embedding are the
same arrays on both sides (Gemma's (1 + w) RMSNorm in both, no offset to add).
Our per-layer shapes come from `model.init_params` (via `jax.eval_shape`), so
this table holds no shape formulas of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from trainer.model import gemma3 as model
from trainer.model.model_config import ModelConfig

# Prefix of the text decoder in a Gemma3ForCausalLM checkpoint (what export writes).
CAUSAL_LM_PREFIX = "model."


@dataclasses.dataclass(frozen=True)
class TensorName:
    """One param: our tree path, the HF name (after the model prefix), the layout."""

    ours: str  # "/"-joined path in our tree; per-layer params are under "layers/"
    hf: str  # HF name; "{i}" stands for the 0-based layer index
    in_dims: int  # leading input dims of a projection; 0: same array on both sides


# Top-level params (no layer axis).
GLOBAL_TENSORS = (
    TensorName("embedding", "embed_tokens.weight", 0),
    TensorName("final_norm", "norm.weight", 0),
)
# Per-layer params, stacked on our leading "layers" axis.
LAYER_TENSORS = (
    TensorName("layers/attn/q", "layers.{i}.self_attn.q_proj.weight", 1),
    TensorName("layers/attn/k", "layers.{i}.self_attn.k_proj.weight", 1),
    TensorName("layers/attn/v", "layers.{i}.self_attn.v_proj.weight", 1),
    TensorName("layers/attn/o", "layers.{i}.self_attn.o_proj.weight", 2),
    TensorName("layers/attn/q_norm", "layers.{i}.self_attn.q_norm.weight", 0),
    TensorName("layers/attn/k_norm", "layers.{i}.self_attn.k_norm.weight", 0),
    TensorName("layers/mlp/gate", "layers.{i}.mlp.gate_proj.weight", 1),
    TensorName("layers/mlp/up", "layers.{i}.mlp.up_proj.weight", 1),
    TensorName("layers/mlp/down", "layers.{i}.mlp.down_proj.weight", 1),
    TensorName("layers/pre_attn_norm", "layers.{i}.input_layernorm.weight", 0),
    TensorName("layers/post_attn_norm", "layers.{i}.post_attention_layernorm.weight", 0),
    TensorName("layers/pre_mlp_norm", "layers.{i}.pre_feedforward_layernorm.weight", 0),
    TensorName("layers/post_mlp_norm", "layers.{i}.post_feedforward_layernorm.weight", 0),
)


def our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{our path: shape} with the layers axis dropped for per-layer params."""
    tree = jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0)))
    shapes = {}
    for entry in GLOBAL_TENSORS + LAYER_TENSORS:
        node = tree
        for key in entry.ours.split("/"):
            node = node[key]
        per_layer = entry.ours.startswith("layers/")
        shapes[entry.ours] = tuple(node.shape[1:] if per_layer else node.shape)
    return shapes


def hf_shape(entry: TensorName, ours_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of a param whose (per-layer) shape is `ours_shape`."""
    if not entry.in_dims:
        return tuple(ours_shape)
    return (int(np.prod(ours_shape[entry.in_dims :])), int(np.prod(ours_shape[: entry.in_dims])))


def to_hf(entry: TensorName, ours_array: np.ndarray) -> np.ndarray:
    """Our (per-layer) array in the HF layout (a contiguous copy)."""
    array = np.asarray(ours_array)
    if entry.in_dims:
        in_size = int(np.prod(array.shape[: entry.in_dims]))
        array = array.reshape(in_size, -1).T
    return np.ascontiguousarray(array)


def from_hf(entry: TensorName, hf_array: np.ndarray, ours_shape: tuple[int, ...]) -> np.ndarray:
    """An HF tensor in our (per-layer) layout."""
    array = np.asarray(hf_array)
    return array.T.reshape(ours_shape) if entry.in_dims else array.reshape(ours_shape)


def hf_tensors(cfg: ModelConfig, params, prefix: str = CAUSAL_LM_PREFIX) -> dict[str, np.ndarray]:
    """Our params as {HF name: fp32 array} for a `Gemma3ForCausalLM` (tied head: no lm_head)."""
    out = {}
    for entry in GLOBAL_TENSORS + LAYER_TENSORS:
        node = params
        for key in entry.ours.split("/"):
            node = node[key]
        array = np.asarray(node, np.float32)
        if entry.ours.startswith("layers/"):
            for i in range(cfg.num_layers):
                out[prefix + entry.hf.format(i=i)] = to_hf(entry, array[i])
        else:
            out[prefix + entry.hf] = to_hf(entry, array)
    return out


def params_from_hf(cfg: ModelConfig, get: Callable[[str, tuple[int, ...]], np.ndarray]):
    """Our stacked param tree from HF tensors.

    Args:
        cfg: the model config the tensors belong to.
        get: get(hf_name_without_prefix, hf_shape) -> array; checks the shape
            and raises the caller's error for a missing or mis-shaped tensor.

    Returns:
        The nested param tree of `model.init_params`, as fp32 numpy arrays.
    """
    shapes = our_shapes(cfg)
    params: dict = {}

    def put(path: str, array: np.ndarray):
        node = params
        *parents, leaf = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = array

    for entry in GLOBAL_TENSORS:
        shape = shapes[entry.ours]
        put(
            entry.ours,
            np.asarray(from_hf(entry, get(entry.hf, hf_shape(entry, shape)), shape), np.float32),
        )
    for entry in LAYER_TENSORS:
        shape = shapes[entry.ours]
        stacked = np.empty((cfg.num_layers, *shape), np.float32)
        for i in range(cfg.num_layers):
            stacked[i] = from_hf(entry, get(entry.hf.format(i=i), hf_shape(entry, shape)), shape)
        put(entry.ours, stacked)
    return params
