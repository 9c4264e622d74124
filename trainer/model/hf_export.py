"""Export a model checkpoint of ours as a Hugging Face `Gemma3ForCausalLM` directory.

    python -m trainer.export_hf --checkpoint PATH --out DIR [--tokenizer SP_MODEL]

Layout of DIR (docs/INTERFACES.md "HF export"):

    config.json              Gemma3TextConfig (model_type gemma3_text), fp32
    model.safetensors        "model.*" tensors, fp32; the head is tied (no lm_head)
    export_metadata.json     our fingerprint, config and checkpoint metadata
    tokenizer.model          the SentencePiece model (with --tokenizer)
    tokenizer.json           the same tokenizer for `tokenizers` (Unigram, byte fallback)
    tokenizer_config.json    special tokens; BOS added, no EOS (how we score and train)
    special_tokens_map.json

Needs neither torch nor transformers: tensors are written with
`safetensors.numpy`, the config and tokenizer files as JSON. The tensor names
and layouts are `trainer.model.hf_layout`'s, the table `teacher_dump.convert` reads
with, so export followed by import is the identity (tested).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

from safetensors.numpy import save_file

from trainer.model import hf_layout, hf_tokenizer, model_io
from trainer.model.model_config import ModelConfig
from trainer.model.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TokenizerError,
    check_matches,
    info_from_bytes,
)

# transformers' own default; our RoPE has no length limit, HF only needs a number.
MAX_POSITION_EMBEDDINGS = 131_072
CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE = (
    "config.json",
    "model.safetensors",
    "export_metadata.json",
)


class ExportError(ValueError):
    """The export cannot be written: bad output dir, not a model, or a bad tokenizer."""


def hf_config(cfg: ModelConfig, tok_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `config.json` of a Gemma3ForCausalLM equal to our model `cfg`.

    Every field our model's numerics depend on is written explicitly (no
    reliance on transformers' defaults): norms are Gemma's (1 + w) RMSNorm with
    `rms_norm_eps`, the local/global pattern as `layer_types`, RoPE per layer
    type (linear scaling on global layers when `rope_global_scale` != 1).
    `trainer.model.hf_import.model_config_from_hf` maps it back to `cfg`.
    """
    global_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_global_base}
    if cfg.rope_global_scale != 1.0:
        global_rope = {
            "rope_type": "linear",
            "factor": cfg.rope_global_scale,
            "rope_theta": cfg.rope_global_base,
        }
    scalar = cfg.head_dim if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar
    if not float(scalar).is_integer():  # transformers validates it as an int.
        raise ExportError(
            f"query_pre_attn_scalar={scalar} is not an integer, which "
            f"Gemma3TextConfig requires; this model cannot be exported"
        )
    # Without --tokenizer the ids are Gemma's, which trainer.model.tokenizer trains with too.
    special = (
        (tok_info["pad_id"], tok_info["eos_id"], tok_info["bos_id"])
        if tok_info
        else (PAD_ID, EOS_ID, BOS_ID)
    )
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "dtype": "float32",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.rms_norm_eps,
        "query_pre_attn_scalar": int(scalar),
        "sliding_window": cfg.sliding_window,
        "layer_types": ["full_attention" if g else "sliding_attention" for g in cfg.global_layers],
        "rope_parameters": {
            "full_attention": global_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base},
        },
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "use_cache": True,
        "pad_token_id": special[0],
        "eos_token_id": special[1],
        "bos_token_id": special[2],
    }


def _check_out(out: str) -> None:
    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
        raise ExportError(
            f"export directory {out} exists and is not empty; pass a new --out "
            f"(nothing was written)"
        )


def _remove_dead_partials(out: str) -> None:
    """Removes `OUT.partial-PID` directories an export killed mid-write left behind.

    A partial directory whose pid is this process's (a pid reused, e.g. in a
    restarted container) or names no running process is stale; one of a live
    pid may be another export in progress and is left alone.
    """
    prefix = f"{os.path.abspath(out).rstrip(os.sep)}.partial-"
    for path in glob.glob(glob.escape(prefix) + "*"):
        pid = path[len(prefix) :]
        if not (pid.isdigit() and os.path.isdir(path)):
            continue
        alive = int(pid) != os.getpid()
        if alive:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:  # Another user's live process.
                pass
        if not alive:
            shutil.rmtree(path)


def export(checkpoint: str, out: str, tokenizer: str | None = None) -> dict[str, Any]:
    """Writes `checkpoint` (a model_io directory) as an HF directory `out`.

    Args:
        checkpoint: a model checkpoint of ours (a run's export/, a teacher, a
            teacher_dump.convert output) or a run directory (uses its export/).
        out: a new or empty output directory.
        tokenizer: the SentencePiece model the checkpoint was trained with;
            None: no tokenizer files.

    Returns:
        {"out", "fingerprint", "files"}.

    Raises:
        ExportError: `out` not empty, `checkpoint` not a model, tokenizer
            mismatch or unsupported.
    """
    _check_out(out)
    if os.path.isdir(os.path.join(checkpoint, "export")):
        checkpoint = os.path.join(checkpoint, "export")
    try:
        cfg, params, metadata = model_io.load_model(checkpoint)
    except model_io.ModelIOError as e:
        raise ExportError(f"cannot export {checkpoint}: {e}") from None
    tok_files, tok_info = {}, None
    if tokenizer is not None:
        try:
            with open(tokenizer, "rb") as f:
                model_bytes = f.read()
            tok_info = info_from_bytes(model_bytes, tokenizer)
        except (OSError, TokenizerError) as e:
            raise ExportError(
                f"cannot use tokenizer {tokenizer} ({e}); pass the SentencePiece "
                f".model the checkpoint was trained with"
            ) from None
        try:
            check_matches(cfg.vocab_size, metadata, tok_info)
            tok_files = hf_tokenizer.hf_tokenizer_files(model_bytes, tokenizer)
        except (TokenizerError, hf_tokenizer.HFTokenizerError) as e:
            raise ExportError(f"cannot export tokenizer {tokenizer}: {e}") from None
    files = {
        CONFIG_FILE: hf_config(cfg, tok_info),  # May refuse: before anything is written.
        METADATA_FILE: {
            "source_checkpoint": os.path.abspath(checkpoint),
            "fingerprint": metadata.get("fingerprint"),
            "model_config": cfg.to_dict(),
            "metadata": metadata,
        },
    }
    # Written next to `out` and renamed into place: a crash leaves no half export at `out`.
    partial = f"{os.path.abspath(out).rstrip(os.sep)}.partial-{os.getpid()}"
    _remove_dead_partials(out)
    try:
        os.makedirs(partial)
        for name, content in {**files, **tok_files}.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(os.path.join(partial, name), mode) as f:
                f.write(content if isinstance(content, bytes) else json.dumps(content, indent=2))
        weights = os.path.join(partial, WEIGHTS_FILE)
        save_file(hf_layout.hf_tensors(cfg, params), weights, metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600); give
        # the weights the mode every other file got from the user's umask.
        os.chmod(weights, os.stat(os.path.join(partial, CONFIG_FILE)).st_mode & 0o777)
        if os.path.isdir(out):
            os.rmdir(out)  # Checked empty above.
        os.rename(partial, out)
    except OSError as e:
        raise ExportError(
            f"cannot write the export to {out} ({e}); pass a writable --out "
            f"(partial files, if any, are in {partial})"
        ) from None
    return {
        "out": out,
        "fingerprint": metadata.get("fingerprint"),
        "files": sorted([WEIGHTS_FILE, *files, *tok_files]),
    }
