"""Gemma 3 model configurations: one frozen dataclass and a registry of named sizes.

The same `ModelConfig` describes teachers and students. Named configs follow the
public Gemma 3 text decoders (docs/DESIGN.md §2); the vocabulary size is always a config
value because our students and teachers use our own SentencePiece vocabulary.
Tiny configs exist so that tests run in seconds on CPU.

    cfg = get_config("gemma3-270m", vocab_size=32000)
    cfg = get_config("tiny", dtype="bfloat16")
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from trainer.model.errors import ConfigError


def parse_enum(enum_cls, value, what: str, error=ConfigError):
    """The member of `enum_cls` named by `value` (its value, or a member itself).

    The one name -> enum parser of the code base (configs, flags, losses).

    Args:
        enum_cls: an `enum.Enum` whose values are the accepted names.
        value: a member or a member's value.
        what: what the value is, for the message (a field, a flag, a kind).
        error: the ValueError subclass to raise.

    Raises:
        error: `value` names no member; the message lists the allowed values.
    """
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        raise error(f"unknown {what} {value!r}; use one of {[m.value for m in enum_cls]}") from None


class ComputeDtype(enum.Enum):
    """Activation/compute dtypes the model supports (params are always fp32)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class AttentionImpl(enum.Enum):
    """How attention is computed (trainer.model.gemma3.attention)."""

    AUTO = None  # The XLA path below (any platform).
    # Plain XLA ops: scores and softmax in fp32, recomputed in the backward pass
    # rather than saved ([B,N,T,T] per layer would dominate training memory).
    XLA = "xla"
    CUDNN = "cudnn"  # jax.nn.dot_product_attention's fused cuDNN kernel (NVIDIA GPUs).


class RematPolicy(enum.Enum):
    """What each block keeps for the backward pass (`jax.checkpoint` per block).

    Measured bytes and step time per policy: docs/memory.md. (JAX's
    dots_saveable is not offered: with attention, norms and GeGLU already
    recomputed inside each block, what it keeps is what NONE keeps.)
    """

    NONE = "none"  # Keep every activation the backward needs (fastest, most memory).
    FULL = "full"  # Keep only each block's input; recompute the block (least memory).
    # Keep matmul outputs without batch dims: the projections, not attention's
    # per-head score/value products, and recompute norms (dots_with_no_batch_dims_saveable).
    DOTS_NO_BATCH = "dots_no_batch"
    # Keep the q/k/v projections and both sublayers' outputs (named in
    # gemma3.block); recompute the MLP's F-wide gate/up and the attention core.
    QKV_AND_OUTPUTS = "qkv_and_outputs"


# Before remat was a policy it was a bool: True meant FULL, False NONE. Old
# configs, exported models and command lines (--set model.remat=True) still load.
_LEGACY_REMAT = {
    True: RematPolicy.FULL,
    False: RematPolicy.NONE,
    "true": RematPolicy.FULL,
    "false": RematPolicy.NONE,
}


def parse_remat(value) -> RematPolicy:
    """The RematPolicy named by `value` (a name, a member, or a legacy bool).

    Raises:
        ConfigError: anything else; the message lists the policies.
    """
    if isinstance(value, bool):
        return _LEGACY_REMAT[value]
    if isinstance(value, str) and value.lower() in _LEGACY_REMAT:
        return _LEGACY_REMAT[value.lower()]
    return parse_enum(RematPolicy, value, "model.remat policy")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Gemma 3 text decoder. Every field is validated in `__post_init__`."""

    name: str = "custom"  # Registry name it came from; informational only.
    vocab_size: int = 32000  # V: embedding rows = output classes (tied).
    num_layers: int = 18  # L: number of decoder blocks.
    d_model: int = 640  # D: residual stream width.
    mlp_dim: int = 2048  # F: GeGLU hidden width (gate and up each D->F).
    num_heads: int = 4  # N: query heads.
    num_kv_heads: int = 1  # K: key/value heads (GQA; N % K == 0).
    head_dim: int = 256  # H: per-head width (not tied to D / N in Gemma 3).
    sliding_window: int = 512  # W: a local layer attends to keys with q - k < W.
    global_every: int = 6  # Layer i (0-based) is global iff (i + 1) % global_every == 0.
    rope_local_base: float = 10_000.0  # RoPE base frequency of local layers.
    rope_global_base: float = 1_000_000.0  # RoPE base frequency of global layers.
    rope_global_scale: float = 1.0  # Linear position scaling of global RoPE (4B: 8).
    query_pre_attn_scalar: float | None = None  # Scores scale = this**-0.5; None: head_dim.
    rms_norm_eps: float = 1e-6  # Epsilon inside every RMSNorm.
    dtype: str = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay fp32).
    scan_layers: bool = True  # Run blocks with lax.scan over stacked params (fast compile).
    # What each block keeps for backward: a RematPolicy value (none, full, ...);
    # legacy True/False read as full/none.
    remat: str = "none"
    attention_impl: str | None = None  # None or "xla" (XLA ops), "cudnn" (fused kernel).

    def __post_init__(self):
        positive = (
            "vocab_size",
            "num_layers",
            "d_model",
            "mlp_dim",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "sliding_window",
            "global_every",
        )
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"model config field {field}={value!r} must be a positive "
                    f"integer; pass e.g. {field}=64"
                )
        if not isinstance(self.scan_layers, bool):
            raise ConfigError(
                f"model config field scan_layers={self.scan_layers!r} must be True or False"
            )
        # Stored normalised, so equal policies compare (and serialise) equal.
        object.__setattr__(self, "remat", parse_remat(self.remat).value)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads="
                f"{self.num_kv_heads}; pick num_kv_heads dividing num_heads"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head_dim={self.head_dim} must be even for RoPE; use e.g. "
                f"head_dim={self.head_dim + 1}"
            )
        for field in ("rope_local_base", "rope_global_base", "rope_global_scale", "rms_norm_eps"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(
                    f"model config field {field}={value!r} must be a positive finite number"
                )
        if self.query_pre_attn_scalar is not None and not self.query_pre_attn_scalar > 0:
            raise ConfigError(
                f"query_pre_attn_scalar={self.query_pre_attn_scalar!r} must be "
                f"> 0, or None to use head_dim"
            )
        parse_enum(ComputeDtype, self.dtype, "dtype")
        parse_enum(AttentionImpl, self.attention_impl, "attention_impl")

    @property
    def query_scale(self) -> float:
        """Multiplier of q·k scores: query_pre_attn_scalar**-0.5 (HF Gemma 3)."""
        scalar = self.head_dim if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar
        return float(scalar) ** -0.5

    def is_global(self, layer: int) -> bool:
        """Whether 0-based block `layer` uses global (full causal) attention."""
        return (layer + 1) % self.global_every == 0

    @property
    def global_layers(self) -> tuple[bool, ...]:
        """Per 0-based block, True for global attention (HF `layer_types`)."""
        return tuple(self.is_global(i) for i in range(self.num_layers))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must not pass)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config fields {unknown}; known fields are {sorted(known)}"
            )
        return cls(**d)

    def replace(self, **overrides) -> ModelConfig:
        """A copy with fields overridden (validated like `get_config` kwargs)."""
        return ModelConfig.from_dict({**self.to_dict(), **overrides})


# Named configs. Sizes from docs/DESIGN.md §2 / the public Gemma 3 configs.
_REGISTRY: dict[str, dict[str, Any]] = {
    "gemma3-270m": dict(
        num_layers=18,
        d_model=640,
        mlp_dim=2048,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        sliding_window=512,
    ),
    "gemma3-1b": dict(
        num_layers=26,
        d_model=1152,
        mlp_dim=6912,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        sliding_window=512,
    ),
    "gemma3-4b": dict(
        num_layers=34,
        d_model=2560,
        mlp_dim=10240,
        num_heads=8,
        num_kv_heads=4,
        head_dim=256,
        sliding_window=1024,
        rope_global_scale=8.0,
    ),
    # Test sizes. "tiny" has no global layer (4 < 6); "tiny-7" has one (block 6)
    # and a window far below typical test sequence lengths.
    "tiny": dict(
        vocab_size=512,
        num_layers=4,
        d_model=64,
        mlp_dim=128,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        sliding_window=8,
    ),
    "tiny-7": dict(
        vocab_size=512,
        num_layers=7,
        d_model=64,
        mlp_dim=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        sliding_window=4,
    ),
    # `make demo` sizes (trainer/configs/demo.py): a CPU-trainable teacher and a
    # student with 1/7 of its backbone; T=128 rows, so the window is half a row.
    "demo-teacher": dict(
        vocab_size=2048,
        num_layers=4,
        d_model=128,
        mlp_dim=512,
        num_heads=4,
        num_kv_heads=1,
        head_dim=32,
        sliding_window=64,
    ),
    "demo-student": dict(
        vocab_size=2048,
        num_layers=2,
        d_model=64,
        mlp_dim=256,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
        sliding_window=64,
    ),
}


def config_names() -> tuple[str, ...]:
    """Names accepted by `get_config`."""
    return tuple(_REGISTRY)


def get_config(name: str, **overrides) -> ModelConfig:
    """Looks up a named config and applies field overrides.

    Args:
        name: a registry name, e.g. "gemma3-270m", "gemma3-4b", "tiny".
        **overrides: ModelConfig fields to replace, e.g. vocab_size=32000.

    Returns:
        The validated ModelConfig.

    Raises:
        ConfigError: unknown name, unknown field or out-of-range value.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model config {name!r}; use one of {list(_REGISTRY)}")
    return ModelConfig.from_dict({**_REGISTRY[name], "name": name, **overrides})
