"""The files of `teacher_dump.convert` and `trainer.export_hf`, without torch.

* convert picks up the checkpoint's tokenizer.model: copied into the
  checkpoint, its sha256 recorded (what the dump and evaluation check), and the
  embedding rows past its pieces dropped (rows kept with --keep-vocab); no
  tokenizer: one warning line saying that nothing can be checked;
* the exported model.safetensors gets the mode of the other files (safetensors
  alone leaves 0600).
"""

import hashlib
import io
import json
import os
import stat

import jax
import numpy as np
import pytest
import sentencepiece as spm

from scripts import demo_corpus
from trainer.model import gemma3 as model
from trainer.model import hf_export, hf_import, model_config, model_io

_PIECES, _ROWS = 300, 320


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """An HF Gemma 3 directory of a random model with 320 embedding rows (no tokenizer)."""
    root = tmp_path_factory.mktemp("hf")
    cfg = model_config.get_config(
        "tiny",
        vocab_size=_ROWS,
        num_layers=2,
        d_model=32,
        mlp_dim=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    model_io.save_model(root / "ckpt", cfg, model.init_params(cfg, jax.random.key(1)))
    hf_export.export(str(root / "ckpt"), str(root / "hf"))
    return root / "hf"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(demo_corpus.load_documents(200)),
        model_writer=buf,
        vocab_size=_PIECES,
        minloglevel=2,
        num_threads=1,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def test_convert_records_and_copies_the_tokenizer_and_fits_the_vocab(
    hf_dir, sp_model, tmp_path, capsys
):
    assert (
        hf_import.main(
            ["--hf-dir", str(hf_dir), "--out", str(tmp_path / "ckpt"), "--tokenizer", str(sp_model)]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    sha = hashlib.sha256(sp_model.read_bytes()).hexdigest()
    assert printed["tokenizer_sha256"] == sha and printed["vocab_trimmed_from"] == _ROWS
    cfg, params, metadata = model_io.load_model(str(tmp_path / "ckpt"))
    assert metadata["tokenizer_sha256"] == sha and metadata["tokenizer"]["vocab_size"] == _PIECES
    assert (tmp_path / "ckpt" / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    _, full, _ = model_io.load_model(str(hf_dir.parent / "ckpt"))
    assert cfg.vocab_size == _PIECES
    np.testing.assert_array_equal(
        np.asarray(params["embedding"]), np.asarray(full["embedding"])[:_PIECES]
    )


def test_convert_keep_vocab_and_no_tokenizer(hf_dir, sp_model, tmp_path, capsys):
    hf_import.convert(hf_dir, tmp_path / "kept", tokenizer=sp_model, keep_vocab=True)
    cfg, _, metadata = model_io.load_model(str(tmp_path / "kept"))
    assert cfg.vocab_size == _ROWS and "vocab_trimmed_from" not in metadata
    assert hf_import.main(["--hf-dir", str(hf_dir), "--out", str(tmp_path / "bare")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no tokenizer" in err[0]


def test_exported_weights_have_the_mode_of_the_other_files(hf_dir):
    modes = {name: stat.S_IMODE(os.stat(hf_dir / name).st_mode) for name in os.listdir(hf_dir)}
    assert len(set(modes.values())) == 1, modes
    umask = os.umask(0)
    os.umask(umask)
    assert modes["model.safetensors"] == 0o666 & ~umask
