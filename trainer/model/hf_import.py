"""Import a Hugging Face Gemma 3 text checkpoint into our model checkpoint format.

    python -m teacher_dump.convert --hf-dir DIR --out CKPT [--tokenizer SP_MODEL]
        [--keep-vocab] [--overwrite]

DIR holds `config.json` and `*.safetensors` of a `Gemma3ForCausalLM` (or the
text half of a `Gemma3ForConditionalGeneration`). Tensors are read with
`safetensors` in numpy (no torch), cast to fp32, re-laid out to the stacked
param tree of `trainer.model` and written with `trainer.model.model_io.save_model`.

The checkpoint's tokenizer (DIR/tokenizer.model, the SentencePiece model Hugging
Face Gemma 3 repositories ship, or --tokenizer) is copied to CKPT/tokenizer.model
and its sha256 recorded in the metadata, so the dump and evaluation refuse any
other tokenizer, even one of the same size. Gemma 3's embedding has more rows
(262,208) than its tokenizer has pieces (262,144): rows no text can produce.
They are dropped (V becomes the tokenizer's size, recorded as
"vocab_trimmed_from"), so that the teacher, its store and the students share one
vocabulary; their share of the teacher's softmax is gone from it (--keep-vocab
keeps them, and then the dump needs a tokenizer of the embedding's size).

Every HF feature our model does not implement (bias, soft-capping,
bidirectional attention, untied head, a non-periodic layer pattern, a RoPE type
other than default/linear) is refused with a clear error rather than silently
converted into a different model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np
from safetensors import safe_open

from trainer.model import tokenizer as tokenizer_lib
from trainer.model.model_config import ModelConfig

# The SentencePiece model a Hugging Face Gemma 3 repository ships, and where the
# converted checkpoint keeps its copy.
TOKENIZER_FILE = "tokenizer.model"

# Gemma3TextConfig defaults (transformers 5.x): hub configs omit fields equal to them.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "use_bidirectional_attention": False,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "sliding_window_pattern": 6,
}
# Where the text decoder lives in the different HF Gemma 3 classes.
_TENSOR_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


class ConvertError(ValueError):
    """The HF checkpoint cannot be converted (unsupported, inconsistent or incomplete)."""


def _text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The text-decoder config with HF defaults filled in."""
    text = hf.get("text_config", hf)
    model_type = text.get("model_type", "gemma3_text")
    if model_type != "gemma3_text":
        raise ConvertError(
            f"config.json model_type is {model_type!r}, not 'gemma3_text'; only "
            f"Gemma 3 text checkpoints can be converted"
        )
    return {
        **_HF_DEFAULTS,
        **{
            k: v
            for k, v in text.items()
            if v is not None or k in ("final_logit_softcapping", "attn_logit_softcapping")
        },
    }


def _rope(t: dict[str, Any]) -> tuple[float, float, float]:
    """(local base, global base, global linear scale) from new- or old-style HF rope fields."""
    params = t.get("rope_parameters")
    if params and "full_attention" in params:
        local, full = params.get("sliding_attention") or {}, params["full_attention"] or {}
    else:  # Old hub format: rope_theta / rope_local_base_freq / rope_scaling.
        local = {"rope_type": "default", "rope_theta": t["rope_local_base_freq"]}
        full = {
            "rope_type": "default",
            "rope_theta": t["rope_theta"],
            **(t.get("rope_scaling") or {}),
        }
    full_type = full.get("rope_type", full.get("type", "default"))
    local_type = local.get("rope_type", local.get("type", "default"))
    if local_type != "default" or full_type not in ("default", "linear"):
        raise ConvertError(
            f"RoPE types local={local_type!r} global={full_type!r} are not "
            f"supported; only default (local) and default/linear (global)"
        )
    scale = float(full.get("factor", 1.0)) if full_type == "linear" else 1.0
    return (
        float(local.get("rope_theta", _HF_DEFAULTS["rope_local_base_freq"])),
        float(full.get("rope_theta", _HF_DEFAULTS["rope_theta"])),
        scale,
    )


def _global_every(t: dict[str, Any]) -> int:
    """The period of the local:global pattern, checked against `layer_types`."""
    num_layers = t["num_hidden_layers"]
    layer_types = t.get("layer_types")
    every = int(t.get("sliding_window_pattern") or 6)
    if layer_types is None:
        return every
    if len(layer_types) != num_layers:
        raise ConvertError(
            f"config.json layer_types has {len(layer_types)} entries for "
            f"num_hidden_layers={num_layers}; fix the config"
        )
    if "full_attention" in layer_types:
        every = layer_types.index("full_attention") + 1
    elif every <= num_layers:
        every = num_layers + 1  # No global layer at all: any period beyond L.
    expected = [
        "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(num_layers)
    ]
    if list(layer_types) != expected:
        raise ConvertError(
            f"config.json layer_types {layer_types} is not a periodic "
            f"local:global pattern; only Gemma 3's 'global every n-th layer' "
            f"patterns are supported"
        )
    return every


def model_config_from_hf(hf: dict[str, Any], name: str = "hf-gemma3") -> ModelConfig:
    """Maps an HF Gemma 3 `config.json` dict to a ModelConfig.

    Raises:
        ConvertError: a feature our model does not implement.
    """
    t = _text_config(hf)
    unsupported = {
        "final_logit_softcapping": t["final_logit_softcapping"] is not None,
        "attn_logit_softcapping": t["attn_logit_softcapping"] is not None,
        "attention_bias": bool(t["attention_bias"]),
        "use_bidirectional_attention": bool(t["use_bidirectional_attention"]),
        "tie_word_embeddings=false": not hf.get("tie_word_embeddings", t["tie_word_embeddings"]),
        "hidden_activation": t["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_tanh"),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ConvertError(
            f"config.json uses {bad}, which our Gemma 3 model does not implement; "
            f"convert a standard Gemma 3 text checkpoint"
        )
    local_base, global_base, global_scale = _rope(t)
    return ModelConfig(
        name=name,
        vocab_size=int(t["vocab_size"]),
        num_layers=int(t["num_hidden_layers"]),
        d_model=int(t["hidden_size"]),
        mlp_dim=int(t["intermediate_size"]),
        num_heads=int(t["num_attention_heads"]),
        num_kv_heads=int(t["num_key_value_heads"]),
        head_dim=int(t["head_dim"]),
        sliding_window=int(t["sliding_window"]),
        global_every=_global_every(t),
        rope_local_base=local_base,
        rope_global_base=global_base,
        rope_global_scale=global_scale,
        query_pre_attn_scalar=float(t["query_pre_attn_scalar"]),
        rms_norm_eps=float(t["rms_norm_eps"]),
    )


class _TensorSource:
    """Name -> tensor lookup over every *.safetensors file of a directory."""

    def __init__(self, hf_dir: pathlib.Path):
        files = sorted(hf_dir.glob("*.safetensors"))
        if not files:
            raise ConvertError(
                f"no *.safetensors files in {hf_dir}; pass the directory written by save_pretrained"
            )
        self._handles = [safe_open(str(f), framework="numpy") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}
        for prefix in _TENSOR_PREFIXES:
            if prefix + "embed_tokens.weight" in self._where:
                self.prefix = prefix
                break
        else:
            raise ConvertError(
                f"missing tensor embed_tokens.weight (tried prefixes "
                f"{list(_TENSOR_PREFIXES)}) in {hf_dir}; is this a Gemma 3 "
                f"checkpoint?"
            )

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The fp32 tensor `prefix + name`, checked against the config's `shape`."""
        full = self.prefix + name
        if full not in self._where:
            raise ConvertError(
                f"missing tensor {full} in the safetensors files; the checkpoint "
                f"is incomplete or config.json has too many layers"
            )
        array = self._where[full].get_tensor(full)
        if tuple(array.shape) != tuple(shape):
            raise ConvertError(
                f"tensor {full} has shape {tuple(array.shape)} but config.json "
                f"implies {tuple(shape)}; use the config.json saved with these "
                f"weights"
            )
        return np.asarray(array, dtype=np.float32)


def load_hf_params(hf_dir, cfg: ModelConfig) -> dict[str, Any]:
    """Reads the HF tensors into our stacked fp32 param tree (numpy arrays).

    The names and layouts come from `trainer.model.hf_layout`, the table the export
    (`trainer.model.hf_export`) writes with.
    """
    from trainer.model import hf_layout  # imports JAX: not for `--help`

    return hf_layout.params_from_hf(cfg, _TensorSource(pathlib.Path(hf_dir)).get)


def _read_tokenizer(path: pathlib.Path) -> tuple[bytes, dict[str, Any]]:
    try:
        model_bytes = path.read_bytes()
        return model_bytes, tokenizer_lib.info_from_bytes(model_bytes, str(path))
    except (OSError, tokenizer_lib.TokenizerError) as e:
        raise ConvertError(
            f"cannot read tokenizer {path} ({e}); pass --tokenizer with the "
            f"checkpoint's SentencePiece tokenizer.model"
        ) from None


def _fit_vocab(
    cfg: ModelConfig, params: dict[str, Any], pieces: int, keep_vocab: bool, tok_name: str
) -> tuple[ModelConfig, dict[str, Any], int | None]:
    """Drops the embedding rows past the tokenizer's pieces (see the module docstring).

    Returns:
        (cfg, params, the original vocab_size if rows were dropped else None).
    """
    if pieces == cfg.vocab_size or keep_vocab:
        return cfg, params, None
    if pieces > cfg.vocab_size:
        raise ConvertError(
            f"tokenizer {tok_name} has {pieces} pieces but the checkpoint's "
            f"embedding only {cfg.vocab_size} rows; pass the tokenizer of this "
            f"checkpoint"
        )
    params = dict(params, embedding=params["embedding"][:pieces])
    return cfg.replace(vocab_size=pieces), params, cfg.vocab_size


def convert(hf_dir, out, overwrite: bool = False, tokenizer=None, keep_vocab: bool = False) -> str:
    """Converts an HF Gemma 3 text checkpoint directory into a model checkpoint.

    Args:
        hf_dir: directory with config.json and *.safetensors (and usually
            tokenizer.model).
        out: output checkpoint path (see trainer.model.model_io).
        overwrite: replace an existing checkpoint at `out`.
        tokenizer: the checkpoint's SentencePiece model; None: hf_dir's
            tokenizer.model when there is one.
        keep_vocab: keep embedding rows past the tokenizer's pieces.

    Returns:
        The params fingerprint of the written checkpoint.

    Raises:
        ConvertError / model_io.ModelIOError: bad input, with the fix in the message.
    """
    from trainer.model import model_io  # JAX and Orbax: only once there is work to do

    hf_dir = pathlib.Path(hf_dir)
    config_path = hf_dir / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(
            f"cannot read {config_path} ({e}); pass --hf-dir pointing at a "
            f"save_pretrained directory"
        ) from None
    cfg = model_config_from_hf(hf, name=f"hf:{hf_dir.name}")
    tok_path = pathlib.Path(tokenizer) if tokenizer else hf_dir / TOKENIZER_FILE
    tok = _read_tokenizer(tok_path) if tokenizer or tok_path.exists() else None
    params = load_hf_params(hf_dir, cfg)
    metadata = {
        "source": "huggingface",
        "hf_dir": str(hf_dir.resolve()),
        "hf_architectures": hf.get("architectures", []),
    }
    if tok is not None:
        cfg, params, trimmed_from = _fit_vocab(
            cfg, params, tok[1]["vocab_size"], keep_vocab, str(tok_path)
        )
        # What the dump (pipelines.plan) and tokenizer.check_matches compare against.
        metadata.update(tokenizer_sha256=tok[1]["sha256"], tokenizer=tok[1])
        if trimmed_from is not None:
            metadata["vocab_trimmed_from"] = trimmed_from
    fp = model_io.save_model(out, cfg, params, metadata, overwrite=overwrite)
    if tok is not None:
        # After the checkpoint (save_model empties `out` first); metadata.json
        # holds its sha256, so a damaged copy is refused where it is used.
        (model_io.resolve_path(out) / TOKENIZER_FILE).write_bytes(tok[0])
    return fp


def main(argv=None) -> int:
    """CLI: python -m teacher_dump.convert --hf-dir DIR --out CKPT [--tokenizer SP] [--overwrite]."""
    parser = argparse.ArgumentParser(
        prog="python -m teacher_dump.convert",
        description="Convert a Hugging Face Gemma 3 text checkpoint to a model checkpoint.",
    )
    parser.add_argument(
        "--hf-dir",
        required=True,
        help="config.json + *.safetensors directory (relative to the current directory)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output model checkpoint directory (relative to the current directory)",
    )
    parser.add_argument(
        "--tokenizer",
        help="the checkpoint's SentencePiece model (default: "
        "HF_DIR/tokenizer.model when present); copied to "
        "OUT/tokenizer.model, its sha256 recorded",
    )
    parser.add_argument(
        "--keep-vocab",
        action="store_true",
        help="keep embedding rows past the tokenizer's pieces (default: drop "
        "them, so teacher, store and students share the tokenizer's V)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    from trainer.model import model_io  # after argument parsing: --help needs no JAX

    try:
        fp = convert(
            args.hf_dir,
            args.out,
            overwrite=args.overwrite,
            tokenizer=args.tokenizer,
            keep_vocab=args.keep_vocab,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # model_io resolved a relative --out against the current directory; say where it went.
    out = model_io.resolve_path(args.out)
    metadata = json.loads((out / "metadata.json").read_text())
    result = {"out": str(out), "fingerprint": fp, "tokenizer": None}
    if "tokenizer_sha256" in metadata:
        result["tokenizer"] = str(out / TOKENIZER_FILE)
        result["tokenizer_sha256"] = metadata["tokenizer_sha256"]
        if "vocab_trimmed_from" in metadata:
            result["vocab_trimmed_from"] = metadata["vocab_trimmed_from"]
    else:
        print(
            f"warning: {args.hf_dir} has no {TOKENIZER_FILE} and no --tokenizer was given: the "
            "checkpoint records no tokenizer, so nothing can check that the dump uses the "
            "right one; pass --tokenizer",
            file=sys.stderr,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from trainer.model import cli_guard

    cli_guard.protect()
    sys.exit(main())
