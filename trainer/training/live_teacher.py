"""The live teacher: a frozen model checkpoint run inside the train step (issue 20).

    teacher_cfg = model_config_of(config)           # cheap: config.json only (FLOPs, checks)
    check_compatible(config, teacher_cfg, metadata, store_sha)   # ConfigError, before compiling
    teacher = load(config, mesh, blocks_needed(phases))  # params sharded like the student's
    out = forward(teacher.params, tokens_BxT, teacher.model_cfg, hidden_layers=(l,), logits=True)

`teacher.checkpoint` names a model checkpoint (`trainer.model.model_io`: a
trainer run's `export/`, or `teacher_dump.convert`'s output). Its params are
read straight into the student's mesh layout (`sharding.tree_shardings` of the
same logical axes, so FSDP/tensor rules are the student's), are passed to the
jitted step as an argument of their own (never closed over: a constant would
be baked into the executable), and never meet `jax.grad` or the optimizer:
the train state does not hold them, so checkpoints and optimizer moments stay
the student's size.

What the step takes from the teacher (`forward`): its final hidden state
(after the final norm), whose tiled unembedding gives the full-vocabulary
log-probs (`trainer.training.live_kd`), and the residual stream after
`teacher.hidden_layer` blocks (each of OPRD's `onpolicy.hidden_layers`),
RMS-normalised per token as the store's
activations are read (`x / rms(x)`, float32), so the hidden-state losses see
the same target as from an exact store, without float16 rounding. With no
logit term only the blocks up to that layer run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp

from trainer.model import gemma3 as model
from trainer.model import layout, model_io
from trainer.model.errors import ModelIOError
from trainer.model.model_config import ConfigError, ModelConfig
from trainer.training import sharding
from trainer.training.config import oprd_layers

# Name scope of the teacher's forward inside the step (profiles, HLO op names, the bench's counts).
SCOPE = "live_teacher"


@dataclasses.dataclass(frozen=True)
class LiveTeacher:
    """A loaded live teacher.

    Attributes:
        model_cfg: its ModelConfig (a jit static).
        params: fp32 params on the mesh (no gradient, no optimizer state).
        shardings: the params' NamedShardings (the step's in_shardings).
        fingerprint: sha256 of its params (metadata.json), recorded in the summary.
    """

    model_cfg: ModelConfig
    params: Any
    shardings: Any
    fingerprint: str


def enabled(config) -> bool:
    """Whether the run has a live teacher (`teacher.checkpoint` set)."""
    return bool(config.teacher.checkpoint)


def _refusal(path, e) -> ConfigError:
    return ConfigError(
        f"teacher.checkpoint={path}: {e}; point it at a model checkpoint (a run's export/ "
        f"or teacher_dump.convert's output)"
    )


def teacher_config(config) -> ModelConfig:
    """The live teacher's ModelConfig from its config.json (cheap: no arrays).

    Raises:
        ConfigError: no live teacher, or an unreadable checkpoint (one line, the fix).
    """
    path = config.teacher.checkpoint
    if not path:
        raise ConfigError("this run has no live teacher; --set teacher.checkpoint=PATH")
    try:
        return model_io.load_config(path)
    except (ModelIOError, OSError) as e:
        raise _refusal(path, e) from None


def model_config_of(config) -> ModelConfig | None:
    """The live teacher's ModelConfig, or None without a live teacher."""
    return teacher_config(config) if enabled(config) else None


def metadata_of(config) -> dict:
    """The live teacher's metadata.json ({} without a live teacher)."""
    if not enabled(config):
        return {}
    path = config.teacher.checkpoint
    try:
        return json.loads((model_io.resolve_path(path) / layout.METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise _refusal(path, e) from None


def check_compatible(
    config, teacher_cfg: ModelConfig, metadata: dict, store_tokenizer_sha: str | None, *, hidden
) -> None:
    """Refuses a teacher whose vocabulary, tokenizer or width the run cannot use.

    Args:
        config: the resolved trainer config.
        teacher_cfg: the teacher's ModelConfig.
        metadata: its metadata.json (tokenizer_sha256 where the trainer or
            teacher_dump.convert recorded one).
        store_tokenizer_sha: the store's tokenizer sha256 (None: unrecorded).
        hidden: whether a hidden-state term reads the teacher (width and layer checked).

    Raises:
        ConfigError: one line listing every mismatch with its fix.
    """
    path = config.teacher.checkpoint
    found = []
    if teacher_cfg.vocab_size != config.model.vocab_size:
        found.append(
            f"its vocab_size={teacher_cfg.vocab_size} but model.vocab_size="
            f"{config.model.vocab_size} (distil from a teacher of the student's vocabulary)"
        )
    teacher_sha = metadata.get("tokenizer_sha256") or (metadata.get("tokenizer") or {}).get(
        "sha256"
    )
    if teacher_sha and store_tokenizer_sha and teacher_sha != store_tokenizer_sha:
        found.append(
            f"it was trained with tokenizer {teacher_sha[:12]}… but the store holds tokens of "
            f"{store_tokenizer_sha[:12]}… (use a store tokenized with the teacher's tokenizer)"
        )
    if hidden:
        if config.teacher.d_model != teacher_cfg.d_model:
            found.append(
                f"its width is {teacher_cfg.d_model} but teacher.d_model={config.teacher.d_model} "
                f"(--set teacher.d_model={teacher_cfg.d_model})"
            )
        if not 1 <= config.teacher.hidden_layer <= teacher_cfg.num_layers:
            found.append(
                f"it has {teacher_cfg.num_layers} layers but teacher.hidden_layer="
                f"{config.teacher.hidden_layer} (--set teacher.hidden_layer="
                f"{teacher_cfg.num_layers // 2})"
            )
        deeper = [x for x in oprd_layers(config) if x > teacher_cfg.num_layers]
        if config.onpolicy.hidden_layers and deeper:
            found.append(
                f"it has {teacher_cfg.num_layers} layers but onpolicy.hidden_layers="
                f"{config.onpolicy.hidden_layers!r} names {deeper} (drop them)"
            )
    if config.teacher.live_topk > teacher_cfg.vocab_size:
        found.append(
            f"teacher.live_topk={config.teacher.live_topk} exceeds its vocabulary "
            f"{teacher_cfg.vocab_size} (--set teacher.live_topk=0 for the full vocabulary)"
        )
    if found:
        raise ConfigError(f"teacher.checkpoint={path} does not fit this run: " + "; ".join(found))


def param_shardings(teacher_cfg: ModelConfig, mesh):
    """NamedShardings of the teacher's params: the student's logical-axis rules."""
    shapes = jax.eval_shape(lambda: model.init_params(teacher_cfg, jax.random.key(0)))
    return sharding.tree_shardings(model.param_logical_axes(teacher_cfg), shapes, mesh)


def abstract_params(teacher_cfg: ModelConfig, mesh):
    """ShapeDtypeStructs of the sharded teacher params (lowering without loading them)."""
    shapes = jax.eval_shape(lambda: model.init_params(teacher_cfg, jax.random.key(0)))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        param_shardings(teacher_cfg, mesh),
    )


def blocks_needed(phases) -> int | None:
    """Teacher blocks a run's live phases read: None (all of them) when one reads its
    logits, else the deepest layer a hidden-state term reads (e.g. OPRD with β = 0,
    HLDC with α = 0). `phases`: `methods.Phase`s (their `live`, `teacher_logits`,
    `teacher_layers`)."""
    live = [p for p in phases if p.live]
    if not live or any(p.teacher_logits for p in live):
        return None
    return max((max(p.teacher_layers, default=0) for p in live), default=0) or None


def _kept(teacher_cfg: ModelConfig, blocks: int | None) -> ModelConfig:
    """The teacher's config cut to its first `blocks` blocks (None or >= L: unchanged)."""
    if blocks is None or blocks >= teacher_cfg.num_layers:
        return teacher_cfg
    return teacher_cfg.replace(num_layers=blocks)


def load(config, mesh, blocks: int | None = None) -> LiveTeacher:
    """Reads `teacher.checkpoint` straight into the mesh layout (check_compatible first).

    Args:
        config: the run's config.
        mesh: the student's mesh.
        blocks: keep only the teacher's first `blocks` blocks (`blocks_needed`): a run
            that never reads its logits holds no more of it than it runs (the rest is
            read, then dropped). None: the whole teacher.
    """
    teacher_cfg = teacher_config(config)
    shardings = param_shardings(teacher_cfg, mesh)
    try:
        cfg, params, metadata = model_io.load_model(config.teacher.checkpoint, shardings)
    except ModelIOError as e:
        raise ConfigError(f"teacher.checkpoint: {e}") from None
    kept = _kept(cfg, blocks)
    if kept is not cfg:
        shardings = param_shardings(kept, mesh)
        layers = jax.tree.map(lambda a: a[: kept.num_layers], params["layers"])
        params = jax.device_put({**params, "layers": layers}, shardings)
    return LiveTeacher(
        model_cfg=kept,
        params=params,
        shardings=shardings,
        fingerprint=str(metadata.get("fingerprint", "")),
    )


def abstract(config, mesh, blocks: int | None = None) -> LiveTeacher:
    """The live teacher with ShapeDtypeStruct params: lowering and compiling its step
    (trainer.plan, bench/step_memory) without reading its weights; `blocks` as `load`."""
    teacher_cfg = _kept(teacher_config(config), blocks)
    return LiveTeacher(
        model_cfg=teacher_cfg,
        params=abstract_params(teacher_cfg, mesh),
        shardings=param_shardings(teacher_cfg, mesh),
        fingerprint="",
    )


def rms_normalized(x_BxTxD: jax.Array) -> jax.Array:
    """float32 x / rms(x) per token, as an exact store's activations are read.

    rms(x) = sqrt(mean(x²)) (store.hidden_codecs.rms); a zero vector stays 0.
    """
    x_BxTxD = x_BxTxD.astype(jnp.float32)
    ms_BxTx1 = jnp.mean(jnp.square(x_BxTxD), axis=-1, keepdims=True)
    return jnp.where(ms_BxTx1 > 0, x_BxTxD * jax.lax.rsqrt(jnp.maximum(ms_BxTx1, 1e-30)), 0.0)


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
    """What the step reads from the live teacher (both gradient-free).

    Attributes:
        final_BxTxD: final hidden state (after the final norm, compute dtype),
            None when no logit term reads the teacher.
        hidden: {l: float32 [B, T, D] x / rms(x) after l blocks} of the `hidden_layers`.
    """

    final_BxTxD: jax.Array | None
    hidden: dict[int, jax.Array]


def forward(
    params,
    tokens_BxT: jax.Array,
    teacher_cfg: ModelConfig,
    *,
    hidden_layers: tuple[int, ...],
    logits: bool,
) -> TeacherOutput:
    """The teacher forward inside the step: final hidden and/or some layers' activations.

    Args:
        params: the teacher's params (the step's argument).
        tokens_BxT: the batch's tokens.
        teacher_cfg: its ModelConfig.
        hidden_layers: the layers after whose blocks to capture the residual stream.
        logits: whether a logit term reads it (else only the blocks up to the
            deepest of `hidden_layers` run).
    """
    params = jax.lax.stop_gradient(params)
    with jax.named_scope(SCOPE):  # Names the teacher's ops in profiles and HLO.
        out = model.forward(
            params,
            tokens_BxT,
            teacher_cfg,
            capture_layers=hidden_layers,
            num_blocks=None if logits else max(hidden_layers, default=0),
        )
        hidden = {layer: rms_normalized(out.captured[layer]) for layer in hidden_layers}
    return TeacherOutput(final_BxTxD=out.final_hidden_BxTxD if logits else None, hidden=hidden)
