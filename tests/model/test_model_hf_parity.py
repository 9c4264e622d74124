"""Parity of our Gemma 3 against Hugging Face `Gemma3ForCausalLM` (the numerical reference).

A tiny random HF model (7 layers so block 6 is global, sliding window 4,
sequence 24 >> window, GQA 4:2, linear-scaled global RoPE as in 4B, random
RMSNorm weights so the (1 + w) convention matters) is saved with
save_pretrained, converted with `teacher_dump.convert`, and compared in fp32.
The unrolled (scan_layers=False) path is covered transitively: it equals the
scanned path in test_model_core.py.

Tolerance: 1e-4 absolute on logits and hidden states (fp32 on CPU; the two
implementations differ only in summation order, observed max error ~1e-6).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import hf_import as convert  # noqa: E402
from trainer.model import model_config, model_io

_ATOL = 1e-4
_forward = jax.jit(model.forward, static_argnames=("cfg", "capture_layers", "num_blocks"))
_SEQ = 24
_HF_KW = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    sliding_window=4,
    query_pre_attn_scalar=16,
    max_position_embeddings=64,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    },
)


def _hf_model(seed=0, **overrides):
    cfg = transformers.Gemma3TextConfig(**{**_HF_KW, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    hf = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # HF inits them at 0; random values test the 1 + w form.
                p.normal_(0.0, 0.3)
    return hf


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(hf model, hf outputs, our cfg, params, metadata, tokens)."""
    root = tmp_path_factory.mktemp("hf")
    hf = _hf_model()
    hf.save_pretrained(root / "hf")
    convert.convert(root / "hf", root / "ckpt")
    cfg, params, metadata = model_io.load_model(root / "ckpt")
    tokens = np.random.default_rng(0).integers(0, 128, size=(2, _SEQ))
    with torch.no_grad():
        out = hf(torch.tensor(tokens), output_hidden_states=True)
    return dict(hf=hf, out=out, cfg=cfg, params=params, metadata=metadata, tokens=tokens, root=root)


def test_converted_config(converted):
    cfg = converted["cfg"]
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads) == (7, 64, 4, 2)
    assert cfg.global_layers == (False,) * 5 + (True, False)
    assert cfg.rope_global_scale == 8.0 and cfg.sliding_window == 4
    assert converted["metadata"]["fingerprint"] == model_io.fingerprint(converted["params"])


def test_logits_and_hidden_match_hf(converted):
    cfg, params, out = converted["cfg"], converted["params"], converted["out"]
    L = cfg.num_layers
    ours = _forward(params, converted["tokens"], cfg, capture_layers=tuple(range(1, L + 1)))
    logits = np.asarray(model.unembed(params, ours.final_hidden_BxTxD, cfg))
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=_ATOL, rtol=0)
    # HF hidden_states[l] is the residual after l blocks for l < L ...
    for l in range(1, L):
        np.testing.assert_allclose(
            np.asarray(ours.captured[l]),
            out.hidden_states[l].numpy(),
            atol=_ATOL * 10,
            rtol=1e-5,
            err_msg=f"layer {l}",
        )
    # ... but its last entry has the final norm applied (transformers 5.x).
    np.testing.assert_allclose(
        np.asarray(ours.final_hidden_BxTxD), out.hidden_states[L].numpy(), atol=_ATOL, rtol=0
    )


def test_bf16_compute_close_to_hf_fp32(converted):
    cfg = converted["cfg"].replace(dtype="bfloat16")
    ours = _forward(converted["params"], converted["tokens"], cfg)
    assert ours.final_hidden_BxTxD.dtype == jax.numpy.bfloat16
    logits = model.unembed(converted["params"], ours.final_hidden_BxTxD, cfg)
    assert logits.dtype == jax.numpy.bfloat16
    logits = np.asarray(logits, np.float32)
    ref = converted["out"].logits.numpy()
    # bf16 keeps ~3 significant digits; errors compound over 7 blocks.
    assert np.abs(logits - ref).max() < 0.05 * np.abs(ref).max()
    agree = (logits.argmax(-1) == ref.argmax(-1)).mean()
    assert agree > 0.9


def test_no_global_layer_and_default_rope(tmp_path):
    """4 layers (all local), old-style rope fields absent: defaults must apply."""
    hf = _hf_model(seed=1, num_hidden_layers=4, rope_parameters=None, sliding_window=5)
    hf.save_pretrained(tmp_path / "hf")
    convert.convert(tmp_path / "hf", tmp_path / "ckpt")
    cfg, params, _ = model_io.load_model(tmp_path / "ckpt")
    assert not any(cfg.global_layers)
    tokens = np.random.default_rng(1).integers(0, 128, size=(1, 17))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    ours = _forward(params, tokens, cfg)
    np.testing.assert_allclose(
        np.asarray(model.unembed(params, ours.final_hidden_BxTxD, cfg)), ref, atol=_ATOL, rtol=0
    )


def test_convert_shape_mismatch_names_tensor(converted, tmp_path):
    hf_dir = converted["root"] / "hf"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConvertError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight"):
        convert.convert(bad, tmp_path / "ckpt")


def test_convert_missing_tensor_names_it(converted, tmp_path):
    hf_dir = converted["root"] / "hf"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    config["num_hidden_layers"] = 8
    config["layer_types"] = config["layer_types"] + ["sliding_attention"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConvertError, match=r"missing tensor model\.layers\.7\."):
        convert.convert(bad, tmp_path / "ckpt")


def test_convert_refuses_softcap(converted, tmp_path):
    config = json.loads((converted["root"] / "hf" / "config.json").read_text())
    config["final_logit_softcapping"] = 30.0
    with pytest.raises(convert.ConvertError, match="final_logit_softcapping"):
        convert.model_config_from_hf(config)


def test_convert_cli_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "teacher_dump.convert",
            "--hf-dir",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: cannot read")
    assert "Traceback" not in proc.stderr


def test_convert_multimodal_layout_bf16_and_cli(converted, tmp_path, capsys):
    """Gemma3ForConditionalGeneration naming + text_config + bf16 tensors, via the CLI main."""
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    hf_dir = converted["root"] / "hf"
    tensors = load_file(str(hf_dir / "model.safetensors"))
    renamed = {
        k.replace("model.", "model.language_model.", 1): v.astype(ml_dtypes.bfloat16)
        for k, v in tensors.items()
    }
    mm = tmp_path / "mm"
    mm.mkdir()
    save_file(renamed, str(mm / "model.safetensors"))
    text = json.loads((hf_dir / "config.json").read_text())
    (mm / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gemma3",
                "architectures": ["Gemma3ForConditionalGeneration"],
                "text_config": text,
            }
        )
    )
    assert convert.main(["--hf-dir", str(mm), "--out", str(tmp_path / "ckpt")]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "ckpt")
    cfg, params, _ = model_io.load_model(tmp_path / "ckpt")
    assert cfg.to_dict() == {**converted["cfg"].to_dict(), "name": "hf:mm"}
    rounded = jax.tree_util.tree_map(
        lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), converted["params"]
    )
    for a, b in zip(jax.tree_util.tree_leaves(rounded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_old_style_hub_rope_fields():
    """Hub config.json files of real Gemma 3 4B use rope_theta/rope_local_base_freq/rope_scaling."""
    hub = {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "sliding_window": 1024,
        "vocab_size": 262208,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    }
    cfg = convert.model_config_from_hf(hub)
    reference = model_config.get_config("gemma3-4b", vocab_size=262208)
    for field in (
        "num_layers",
        "d_model",
        "mlp_dim",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "sliding_window",
        "global_every",
        "rope_local_base",
        "rope_global_base",
        "rope_global_scale",
        "query_scale",
    ):
        assert getattr(cfg, field) == getattr(reference, field), field


def test_convert_cli_with_relative_paths(converted, tmp_path, monkeypatch, capsys):
    """`--hf-dir hf --out ckpt` from the directory holding hf/ (Orbax wants absolute paths)."""
    os.symlink(converted["root"] / "hf", tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    assert convert.main(["--hf-dir", "hf", "--out", "ckpt/g"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(tmp_path / "ckpt" / "g")
    assert printed["fingerprint"] == converted["metadata"]["fingerprint"]
    assert convert.main(["--hf-dir", "hf", "--out", "ckpt/g"]) == 2  # exists: one line
    assert "--overwrite" in capsys.readouterr().err
