"""Input edge cases: a directory as --input, NUL characters, several globs for the tokenizer."""

import json
import logging
import os

import pytest

from pipelines import inputs, train_tokenizer
from pipelines.errors import DecodeError, InputError
from trainer.model import tokenizer


@pytest.mark.parametrize("slash", ["", "/"])
def test_directory_is_its_files_with_or_without_slash(tmp_path, slash):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("second\n")
    (tmp_path / "d" / "a.jsonl").write_text(json.dumps({"text": "first"}) + "\n")
    (tmp_path / "d" / ".DS_Store").write_bytes(b"\x00\x01")  # never corpus text
    (tmp_path / "d" / "sub" / "c.txt").write_text("not read: sub-directory\n")
    directory = str(tmp_path / "d") + slash
    assert [os.path.basename(p) for p in inputs.expand_inputs([directory])] == ["a.jsonl", "b.txt"]
    assert list(inputs.iter_corpus([directory])) == ["first", "second"]


def test_empty_directory_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".gitkeep").write_text("")
    with pytest.raises(InputError, match=r"input directory .*empty' holds no file"):
        inputs.expand_inputs([str(tmp_path / "empty")])


@pytest.mark.parametrize(
    "name, content",
    [
        ("raw.txt", b"fine doc\n\nbad \x00 doc\n"),
        ("utf16.txt", "text saved as UTF-16\n".encode("utf-16-le")),
        ("escaped.jsonl", b'{"text": "ok"}\n{"text": "nul \\u0000 escaped"}\n'),
    ],
)
def test_nul_characters_are_refused_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(
        DecodeError,
        match=rf"{name} document \d+ contains NUL characters.*"
        r"--decode-errors replace",
    ):
        list(inputs.read_documents(str(path)))


def test_nul_characters_dropped_with_one_warning_under_replace(tmp_path, caplog):
    path = tmp_path / "raw.txt"
    path.write_bytes(b"fine doc\n\nbad \x00 doc\n\nalso\x00\x00 bad\n")
    with caplog.at_level(logging.WARNING, logger="pipelines.inputs"):
        docs = list(inputs.read_documents(str(path), decode_errors="replace"))
    assert docs == ["fine doc", "bad  doc", "also bad"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{path}: dropped NUL characters from 2 document(s) (--decode-errors replace)"
    ]


def test_train_tokenizer_takes_several_inputs_like_the_dump(tmp_path, capsys):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text(
            "\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(8)) for i in range(200))
        )
    prefix = str(tmp_path / "tok")
    rc = train_tokenizer.main(
        [
            "--input",
            str(tmp_path / "one"),
            str(tmp_path / "two" / "*.txt"),
            "--model-prefix",
            prefix,
            "--vocab-size",
            "280",
            "--num-threads",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert tokenizer.tokenizer_info(prefix + ".model")["vocab_size"] == 280
    # Both inputs were read: a missing second one is an error, not silently dropped.
    rc = train_tokenizer.main(
        [
            "--input",
            str(tmp_path / "one"),
            str(tmp_path / "none*.txt"),
            "--model-prefix",
            prefix + "2",
            "--vocab-size",
            "280",
        ]
    )
    assert rc == 2 and "none*.txt' matches no file" in capsys.readouterr().err
