"""Tokenizer helper: training, info, loading, CLI, errors."""

import hashlib
import os

import pipelines_testlib as lib
import pytest

from pipelines import train_tokenizer
from trainer.model import tokenizer
from trainer.model.tokenizer import TokenizerError


def test_info_matches_contract(tokenizer_path):
    info = tokenizer.tokenizer_info(tokenizer_path)
    assert set(info) == {"sha256", "vocab_size", "bos_id", "eos_id", "pad_id"}
    assert info["sha256"] == hashlib.sha256(open(tokenizer_path, "rb").read()).hexdigest()
    assert (info["vocab_size"], info["pad_id"], info["eos_id"], info["bos_id"]) == (
        lib.VOCAB,
        0,
        1,
        2,
    )


def test_byte_fallback_round_trips_unseen_text(tokenizer_path):
    sp = tokenizer.load_tokenizer(tokenizer_path)
    text = "Ünïcödé 漢字 and\ttabs\nnew lines 12345"
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert sp.decode(ids) == text


def test_training_is_deterministic(corpus, tmp_path, tokenizer_path):
    _, docs = corpus
    again = tokenizer.train_tokenizer(
        iter(docs), str(tmp_path / "again"), vocab_size=lib.VOCAB, num_threads=1
    )
    assert (
        tokenizer.tokenizer_info(again)["sha256"]
        == tokenizer.tokenizer_info(tokenizer_path)["sha256"]
    )


def test_cli_trains_a_model(corpus, tmp_path, capsys):
    directory, _ = corpus
    prefix = str(tmp_path / "cli")
    rc = train_tokenizer.main(
        [
            "--input",
            os.path.join(directory, "*.txt"),
            "--model-prefix",
            prefix,
            "--vocab-size",
            "300",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == prefix + ".model"
    assert tokenizer.tokenizer_info(prefix + ".model")["vocab_size"] == 300


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = train_tokenizer.main(
        ["--input", str(tmp_path / "none*.txt"), "--model-prefix", str(tmp_path / "m")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: input") and "matches no file" in err and "\n" not in err


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match=r"too small.*--vocab-size >= 261"):
        tokenizer.train_tokenizer(iter(["x"]), str(tmp_path / "m"), vocab_size=100)
    with pytest.raises(TokenizerError, match=r"no text"):
        tokenizer.train_tokenizer(iter(["", "  "]), str(tmp_path / "m"), vocab_size=300)
    with pytest.raises(TokenizerError, match=r"give more text or a smaller --vocab-size"):
        tokenizer.train_tokenizer(iter(["tiny corpus"]), str(tmp_path / "m"), vocab_size=5000)
    with pytest.raises(
        TokenizerError, match=r"cannot read tokenizer model.*pipelines\.train_tokenizer"
    ):
        tokenizer.load_tokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match=r"not a SentencePiece model"):
        tokenizer.tokenizer_info(str(junk))
