"""Export to Hugging Face (`trainer.export_hf`) checked against `transformers` itself.

* HF -> ours (teacher_dump.convert) -> HF (export): the re-loaded
  `Gemma3ForCausalLM` holds bit-identical tensors and gives the original's
  logits (fp32, default attention implementation, 24 tokens >> window 4,
  random norm weights, GQA, linear-scaled global RoPE, one global layer).
* ours -> HF: a random model of ours with random norm weights gives the same
  logits in transformers as in `trainer.model` (atol 1e-4 fp32: summation
  order only; the parity of the forward pass itself is test_model_hf_parity).
* `AutoTokenizer.from_pretrained(DIR)` ids equal SentencePiece's on real text
  (Wikipedia leads of the demo corpus), BOS first and no EOS.
* CLI: refusing a non-empty --out, a one-line error for a non-model.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_model_hf_parity import _hf_model  # noqa: E402

from trainer import export_hf  # noqa: E402
from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import (
    hf_export,  # noqa: E402
    model_config,
    model_io,
)
from trainer.model import hf_import as convert  # noqa: E402

_ATOL = 1e-4
_SEQ = 24


def _hf_logits(hf_dir, tokens):
    hf = transformers.Gemma3ForCausalLM.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
        return hf, hf(torch.tensor(tokens)).logits.numpy()


def test_hf_ours_hf_round_trip(tmp_path):
    original = _hf_model(seed=3)
    original.save_pretrained(tmp_path / "hf")
    convert.convert(tmp_path / "hf", tmp_path / "ckpt")
    result = hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert {"config.json", "model.safetensors"} <= set(result["files"])
    tokens = np.random.default_rng(3).integers(0, 128, size=(2, _SEQ))
    reloaded, logits = _hf_logits(tmp_path / "out", tokens)
    state = reloaded.state_dict()
    for name, tensor in original.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy(), err_msg=name)
    with torch.no_grad():
        ref = original(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=0)
    # The written config maps back to the same model config.
    cfg = model_io.load_config(tmp_path / "ckpt")
    again = convert.model_config_from_hf(json.loads((tmp_path / "out/config.json").read_text()))
    assert again.replace(name=cfg.name) == cfg


def _random_norms(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = [
        rng.normal(0, 0.3, leaf.shape).astype(np.float32)
        if "norm" in jax.tree_util.keystr(path)
        else leaf
        for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def test_our_model_matches_transformers(tmp_path):
    cfg = model_config.get_config(
        "tiny-7", vocab_size=96, rope_global_scale=4.0, query_pre_attn_scalar=24.0
    )
    params = _random_norms(model.init_params(cfg, jax.random.PRNGKey(1)), seed=1)
    model_io.save_model(tmp_path / "ckpt", cfg, params)
    assert (
        export_hf.main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
        == 0
    )
    tokens = np.random.default_rng(1).integers(0, 96, size=(2, 20))
    _, logits = _hf_logits(tmp_path / "out", tokens)
    ours = model.unembed(params, model.forward(params, tokens, cfg).final_hidden_BxTxD, cfg)
    np.testing.assert_allclose(logits, np.asarray(ours), atol=_ATOL, rtol=0)


def test_autotokenizer_ids_equal_sentencepiece(wiki_tokenizer, tmp_path):
    from trainer.model.tokenizer import load_tokenizer, tokenizer_info

    docs, tok = wiki_tokenizer
    cfg = model_config.get_config("tiny", vocab_size=600)
    model_io.save_model(
        tmp_path / "ckpt",
        cfg,
        model.init_params(cfg, jax.random.PRNGKey(0)),
        {"tokenizer_sha256": tokenizer_info(tok)["sha256"]},
    )
    hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), tok)
    sp = load_tokenizer(tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    # Held-back documents (unseen in training: byte fallback, rare pieces) plus edge cases.
    texts = docs[300:340] + [
        "  two leading spaces",
        "tab\tand\nnewline",
        "ünïcödé ☃ 漢字",
        "digits 1234567",
        "trailing space ",
    ]
    for text in texts:
        ours = sp.encode(text)
        assert hf_tok(text)["input_ids"] == [sp.bos_id()] + ours, text
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours, text
        assert hf_tok.decode(ours) == sp.decode(ours), text
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (
        sp.bos_id(),
        sp.eos_id(),
        sp.pad_id(),
    )


def test_tokenizer_of_another_model_is_refused(wiki_tokenizer, tmp_path):
    cfg = model_config.get_config("tiny", vocab_size=96)
    model_io.save_model(tmp_path / "ckpt", cfg, model.init_params(cfg, jax.random.PRNGKey(0)))
    with pytest.raises(hf_export.ExportError, match="vocab_size=96 differs"):
        hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"), wiki_tokenizer[1])
    assert not (tmp_path / "out").exists()


def test_non_integer_query_scalar_is_refused_before_writing(tmp_path):
    cfg = model_config.get_config("tiny", vocab_size=96, query_pre_attn_scalar=20.5)
    model_io.save_model(tmp_path / "ckpt", cfg, model.init_params(cfg, jax.random.PRNGKey(0)))
    with pytest.raises(hf_export.ExportError, match="query_pre_attn_scalar=20.5"):
        hf_export.export(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def _cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export_hf", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.strip()


def test_cli_refuses_non_empty_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = _cli("--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert "not empty" in err and "--out" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


def test_cli_not_a_model_is_one_line(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "config.json").write_text("{}")
    code, err = _cli("--checkpoint", tmp_path / "notamodel", "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: cannot export") and "incomplete" in err
    assert not (tmp_path / "out").exists()
