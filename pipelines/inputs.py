"""Input documents: file globs of plain text, JSON lines (C4 format) or parquet.

Document order is part of the dataset's identity (it fixes which row every
token lands in), so it is defined here once: files in sorted path order
(duplicates across globs removed), documents in file order.

Formats (chosen per file by suffix, after stripping a compression suffix, or
forced with `input_format`):

- text (`.txt`, `.text`): documents are separated by one or more blank lines;
  lines inside a document are joined with "\\n".
- jsonl (`.jsonl`, `.json`, e.g. C4's `c4-train.00000-of-01024.json.gz`): one
  JSON object per line with a string field `text`.
- parquet (`.parquet`): a string column `text`.

Compressed files (`.gz`, `.bz2`, `.zst`, ...) are read through Beam's
`FileSystems`, which also makes `gs://` / `s3://` paths work.
"""

import bz2
import contextlib
import enum
import gzip
import json
import logging
import lzma
import os
import zlib

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.errors import DecodeError, InputError
from trainer.model import model_config

log = logging.getLogger(__name__)

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".xz", ".lzma")


class InputFormat(enum.Enum):
    """How documents are laid out in a file."""

    AUTO = "auto"
    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"


_FORMAT_BY_SUFFIX = {
    ".txt": InputFormat.TEXT,
    ".text": InputFormat.TEXT,
    ".jsonl": InputFormat.JSONL,
    ".json": InputFormat.JSONL,
    ".parquet": InputFormat.PARQUET,
}


class DecodeErrors(enum.Enum):
    """What to do with bytes that are not valid UTF-8."""

    STRICT = "strict"  # fail, naming the file and line
    REPLACE = "replace"  # substitute U+FFFD and go on


def parse_enum(enum_cls, value, flag):
    """`model_config.parse_enum` raising an InputError (a flag's value names no choice)."""
    return model_config.parse_enum(enum_cls, value, flag, InputError)


def detect_format(path, input_format=InputFormat.AUTO):
    """Returns the InputFormat of `path` (its suffix, unless one is forced)."""
    input_format = parse_enum(InputFormat, input_format, "--input-format")
    if input_format is not InputFormat.AUTO:
        return input_format
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix, fmt in _FORMAT_BY_SUFFIX.items():
        if name.endswith(suffix):
            return fmt
    known = ", ".join(_FORMAT_BY_SUFFIX)
    raise InputError(
        f"cannot tell the format of {path} from its suffix (known: {known}); "
        "rename it or pass --input-format text|jsonl|parquet"
    )


def _directory_files(path):
    """The files directly in local directory `path` (what `DIR/` matches), dot-files left out.

    Dot-files (.DS_Store, .gitkeep, editor swap files) are never corpus text and
    have no format suffix; sub-directories are not descended into, as with `DIR/`.
    """
    try:
        results = FileSystems.match([os.path.join(path, "")])
    except Exception as e:  # Beam raises BeamIOError for unlistable paths
        raise InputError(f"cannot list input directory {path!r}: {e}; check the path") from None
    return [
        m.path
        for r in results
        for m in r.metadata_list
        if not os.path.basename(m.path).startswith(".")
    ]


def expand_inputs(globs):
    """Expands file globs into the sorted, de-duplicated list of input files.

    A local directory (with or without a trailing `/`) stands for the files
    directly in it, dot-files left out.

    Args:
        globs: file patterns (local paths or any Beam filesystem URL).

    Returns:
        list[str]: matched file paths in sorted order.

    Raises:
        InputError: no glob given, or a glob matches no file.
    """
    if not globs:
        raise InputError("no input given; pass --input GLOB (repeatable)")
    paths = set()
    for pattern in globs:
        if "://" not in pattern and os.path.isdir(pattern):
            matched = _directory_files(pattern)
            if not matched:
                raise InputError(
                    f"input directory {pattern!r} holds no file (dot-files and "
                    "sub-directories are not read); check the path"
                )
            paths.update(matched)
            continue
        try:
            results = FileSystems.match([pattern])
        except Exception as e:  # Beam raises BeamIOError for unreachable paths
            raise InputError(f"cannot list input {pattern!r}: {e}; check the path") from None
        matched = [m.path for r in results for m in r.metadata_list]
        if not matched:
            raise InputError(f"input {pattern!r} matches no file; check the path or glob")
        paths.update(matched)
    return sorted(paths)


def check_readable(path):
    """Raises InputError unless `path` can be opened and its first byte read.

    Reads through the compression its suffix implies, so a `.gz` that is not
    gzip fails here, before any work; corruption further in is caught while
    reading (`read_documents`).
    """
    try:
        with _open(path) as f:
            f.read(1)
    except InputError:
        raise
    except Exception as e:
        raise InputError(
            f"cannot read input file {path}: {type(e).__name__}: {e}; "
            "check that it exists and is readable"
        ) from None


def _decode(raw, path, where, decode_errors):
    try:
        return raw.decode("utf-8", errors=decode_errors.value)
    except UnicodeDecodeError as e:
        raise DecodeError(
            f"{path} {where} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 4]!r}); "
            "fix the file or pass --decode-errors replace"
        ) from None


# Python's decompressors raise on a truncated stream; Beam's CompressedFile
# silently stops at the cut, which would drop the tail of a file unnoticed.
_DECOMPRESSORS = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
    ".lzma": lzma.LZMAFile,
}


@contextlib.contextmanager
def _open(path, decompress=True):
    """Opens a file for binary reading, decompressing by suffix."""
    lower = path.lower()
    suffix = next((s for s in _DECOMPRESSORS if lower.endswith(s)), None) if decompress else None
    # Other codecs Beam knows (.zst, .deflate) go through its CompressedFile.
    beam_codec = decompress and suffix is None and lower.endswith((".zst", ".deflate"))
    try:
        raw = FileSystems.open(
            path,
            compression_type=(
                CompressionTypes.AUTO if beam_codec else CompressionTypes.UNCOMPRESSED
            ),
        )
    except Exception as e:
        raise InputError(
            f"cannot read input file {path}: {type(e).__name__}: {e}; "
            "check that it exists and is readable"
        ) from None
    with raw:
        if suffix is None:
            yield raw
        else:
            with _DECOMPRESSORS[suffix](raw) as f:
                yield f


def _lines(f):
    # Beam's CompressedFile supports readline() but not iteration.
    while True:
        raw = f.readline()
        if not raw:
            return
        yield raw


def _read_text(path, decode_errors):
    lines = []
    with _open(path) as f:
        for line_no, raw in enumerate(_lines(f), 1):
            line = _decode(raw, path, f"line {line_no}", decode_errors).rstrip("\r\n")
            if line.strip():
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def _read_jsonl(path, decode_errors):
    with _open(path) as f:
        for line_no, raw in enumerate(_lines(f), 1):
            line = _decode(raw, path, f"line {line_no}", decode_errors)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path} line {line_no} is not valid JSON ({e.msg}); "
                    "fix the file or pass --input-format text"
                ) from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(
                    f"{path} line {line_no} has no string field 'text'; "
                    'JSON lines inputs need {"text": ...} per line (the C4 format)'
                )
            yield text


def _read_parquet(path, decode_errors):
    # Only parquet inputs pay for pyarrow's import.
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open(path, decompress=False) as f:
        try:
            parquet = pq.ParquetFile(f)
        except Exception as e:
            raise InputError(
                f"{path} is not a readable parquet file ({e}); fix or remove it"
            ) from None
        if "text" not in parquet.schema_arrow.names:
            raise InputError(
                f"{path} has no 'text' column (columns: {parquet.schema_arrow.names}); "
                "parquet inputs need a string column named 'text'"
            )
        for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
            column = batch.column(0)
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                for row, raw in enumerate(column.to_pylist()):
                    if raw is not None:
                        yield _decode(raw, path, f"row {row}", decode_errors)
            else:
                # Arrow validated UTF-8 for string columns when the file was written.
                for text in column.to_pylist():
                    if text is not None:
                        yield text


_READERS = {
    InputFormat.TEXT: _read_text,
    InputFormat.JSONL: _read_jsonl,
    InputFormat.PARQUET: _read_parquet,
}


def read_documents(path, input_format=InputFormat.AUTO, decode_errors=DecodeErrors.STRICT):
    """Yields the documents of one file, in file order.

    Args:
        path: a local path or Beam filesystem URL.
        input_format: an InputFormat (or its value); AUTO picks by suffix.
        decode_errors: a DecodeErrors (or its value) for non-UTF-8 bytes.

    Yields:
        str: each document's text (empty documents are skipped).

    NUL characters (raw bytes, or `\\u0000` in JSON) are no text: they come
    from binary or UTF-16 files given as text. STRICT refuses the file naming
    the document; REPLACE drops them and warns once per file with the count.

    Raises:
        InputError: unreadable file, bad JSON, missing `text` field/column.
        DecodeError: non-UTF-8 bytes or NUL characters under DecodeErrors.STRICT.
    """
    fmt = detect_format(path, input_format)
    decode_errors = parse_enum(DecodeErrors, decode_errors, "--decode-errors")
    with_nul = 0
    try:
        for index, text in enumerate(_READERS[fmt](path, decode_errors), 1):
            if "\x00" in text:
                if decode_errors is DecodeErrors.STRICT:
                    raise DecodeError(
                        f"{path} document {index} contains NUL characters (a binary or UTF-16 "
                        "file?); fix the file or pass --decode-errors replace (drops them)"
                    )
                with_nul += 1
                text = text.replace("\x00", "")
            if text.strip():
                yield text
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(
            f"cannot read input file {path}: {type(e).__name__}: {e}; "
            "check that it is complete and not corrupt (re-download or remove it)"
        ) from None
    finally:  # Also when the reader stops early (e.g. the tokenizer's sentence cap).
        if with_nul:
            log.warning(
                "%s: dropped NUL characters from %d document(s) (--decode-errors replace)",
                path,
                with_nul,
            )


def iter_corpus(globs, input_format=InputFormat.AUTO, decode_errors=DecodeErrors.STRICT):
    """Yields every document of every matched file, in the canonical order."""
    for path in expand_inputs(globs):
        yield from read_documents(path, input_format, decode_errors)
