"""Input readers: formats, canonical order, and bad-input errors."""

import gzip
import os

import pipelines_testlib as lib
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import inputs
from pipelines.errors import DecodeError, InputError


def test_formats_and_order(corpus):
    directory, docs = corpus
    # Globs overlap and are given out of order: files are still read once, sorted.
    got = list(inputs.iter_corpus([os.path.join(directory, "c.*"), os.path.join(directory, "*")]))
    assert got == docs
    assert [os.path.basename(p) for p in inputs.expand_inputs([os.path.join(directory, "*")])] == [
        "a.txt",
        "b.jsonl.gz",
        "c.parquet",
    ]


def test_text_documents_split_on_blank_lines(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("first line\nsecond line\n\n  \n\nnext doc\r\n\n\n")
    assert list(inputs.read_documents(str(path))) == ["first line\nsecond line", "next doc"]


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\n\nnot \xff fine\n")
    with pytest.raises(
        DecodeError, match=r"bad\.txt line 3 is not valid UTF-8.*--decode-errors replace"
    ):
        list(inputs.read_documents(str(path)))
    assert list(inputs.read_documents(str(path), decode_errors="replace")) == [
        "fine",
        "not \ufffd fine",
    ]


def test_non_utf8_in_jsonl_gz(tmp_path):
    path = tmp_path / "c4.json.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    with pytest.raises(DecodeError, match=r"c4\.json\.gz line 2"):
        list(inputs.read_documents(str(path)))


def test_parquet_binary_column_is_decoded_strictly(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff"], pa.binary())}), path)
    with pytest.raises(DecodeError, match=r"p\.parquet row 1"):
        list(inputs.read_documents(str(path)))


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        ("nofield.jsonl", b'{"body": "x"}\n', r"no string field 'text'"),
        ("badjson.jsonl", b'{"text": \n', r"not valid JSON"),
        ("fake.txt.gz", b"not gzip at all", r"cannot read input file .*fake\.txt\.gz"),
        ("notes.md", b"hello", r"cannot tell the format.*--input-format"),
    ],
)
def test_bad_files(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=pattern):
        inputs.check_readable(str(path))
        list(inputs.read_documents(str(path)))


def test_truncated_gzip_is_an_error_not_a_short_file(tmp_path):
    full = gzip.compress(("\n\n".join(lib.random_documents(1, 200))).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"cut\.txt\.gz.*not corrupt"):
        list(inputs.read_documents(str(path)))


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(InputError, match=r"no 'text' column"):
        list(inputs.read_documents(str(path)))


def test_missing_input_and_no_input(tmp_path):
    with pytest.raises(InputError, match=r"matches no file"):
        inputs.expand_inputs([str(tmp_path / "nothing-*.txt")])
    with pytest.raises(InputError, match=r"no input given"):
        inputs.expand_inputs([])


def test_forced_format(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text('{"text": "a"}\n')
    assert list(inputs.read_documents(str(path), input_format="jsonl")) == ["a"]
    with pytest.raises(InputError, match=r"unknown --input-format 'csv'"):
        inputs.detect_format(str(path), "csv")


def test_user_error_found_in_remote_traceback_text():
    from pipelines import errors

    class StoreInputError(ValueError):
        pass

    text = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "pipelines.errors.DecodeError: a.txt line 3 is not valid UTF-8; fix it "
        "[while running 'ReadSpine/ReadTokenize']\n"
    )
    found = errors.find_pipeline_error(RuntimeError(text))
    assert isinstance(found, errors.DecodeError)
    assert str(found) == "a.txt line 3 is not valid UTF-8; fix it"
    # A longer class name that ends in one of ours is not mistaken for it.
    other = errors.find_pipeline_error(
        RuntimeError("store.errors.StoreInputError: bad rows\n"), extra_classes=(StoreInputError,)
    )
    assert type(other) is StoreInputError
    assert errors.find_pipeline_error(RuntimeError("KeyError: 'x'")) is None
