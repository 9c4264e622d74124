"""SentencePiece tokenizer: train one on a corpus sample, load it, describe it.

Part of the model (its vocabulary), below both the dump pipeline and
evaluation, so neither imports the other. No Beam import: the CLI that reads a
corpus (`python -m pipelines.train_tokenizer --input GLOB --model-prefix
PREFIX`) lives in `pipelines`.

Special ids follow Gemma: pad=0, eos=1, bos=2, unk=3. The model is a unigram
model with byte fallback, so no text is ever mapped to <unk>; whitespace is
kept as is (identity normalisation, no whitespace collapsing) because a
language model must reproduce the text it is trained on.
"""

import hashlib
import io
import itertools
import os

import sentencepiece as spm

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


class TokenizerError(ValueError):
    """The tokenizer model is missing, unreadable, or lacks the required special ids."""


# SentencePiece's trainer skips "sentences" longer than this many bytes; the
# sample is cut into lines first so that long documents still contribute.
MAX_SENTENCE_BYTES = 4192

# SentencePiece's unigram EM result depends on its thread count (measured:
# 1, 2 and 4 threads give three different models), so it is pinned.
DEFAULT_THREADS = 8


def _sample_sentences(text_iter, max_sentences):
    """Yields up to `max_sentences` non-empty lines, in corpus order.

    A deterministic prefix sample: the same corpus always trains the same
    model (the store records its sha256, so reproducibility matters more
    than a uniform sample).
    """

    def lines():
        for text in text_iter:
            for line in text.split("\n"):
                line = line.strip()
                if line:
                    yield line[: MAX_SENTENCE_BYTES // 4]  # ≤ 4 bytes per UTF-8 char

    return itertools.islice(lines(), max_sentences)


def train_tokenizer(
    text_iter,
    model_prefix,
    vocab_size=32000,
    *,
    max_sentences=1_000_000,
    character_coverage=0.9995,
    num_threads=DEFAULT_THREADS,
):
    """Trains a SentencePiece unigram model on a sample of `text_iter`.

    Args:
        text_iter: iterable of document strings (e.g. `inputs.iter_corpus`).
        model_prefix: output path without suffix; writes PREFIX.model and
            PREFIX.vocab (piece<TAB>score per line, for reading by eye).
        vocab_size: number of pieces, specials and the 256 byte pieces included.
        max_sentences: at most this many lines (the first ones) are used.
        character_coverage: fraction of characters covered by non-byte pieces.
        num_threads: trainer threads. The trained model depends on this
            number, so the default is a constant, not the machine's CPU count.

    Returns:
        str: the path of the written `.model` file.

    Raises:
        TokenizerError: vocab_size too small for byte fallback, the sample is
            empty, or the sample is too small for the requested vocab.
    """
    min_vocab = 256 + 4 + 1
    if vocab_size < min_vocab:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: byte fallback needs 256 byte pieces "
            f"plus 4 specials; use --vocab-size >= {min_vocab}"
        )
    sample = list(_sample_sentences(text_iter, max_sentences))
    if not sample:
        raise TokenizerError("no text to train the tokenizer on; check the --input files")
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    # Trained into memory: the model proto would otherwise record
    # model_prefix, making the sha256 depend on where the file was written.
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            byte_fallback=True,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        # e.g. "Vocabulary size is too high (512). Please set it to a value <= 420."
        raise TokenizerError(
            f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}; "
            "give more text or a smaller --vocab-size"
        ) from None
    path = model_prefix + ".model"
    with open(path, "wb") as f:
        f.write(model.getvalue())
    sp = tokenizer_from_bytes(model.getvalue(), path)
    with open(model_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n")
    return path


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TokenizerError(
            f"cannot read tokenizer model {path} ({e.strerror}); train one with "
            "`python -m pipelines.train_tokenizer --input GLOB --model-prefix PREFIX`"
        ) from None


def tokenizer_from_bytes(model_bytes, name="<bytes>"):
    """Loads a SentencePieceProcessor from a serialized model.

    Raises:
        TokenizerError: not a SentencePiece model, or it lacks bos/eos/pad ids.
    """
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_bytes)
    except RuntimeError:  # what SentencePiece raises for bytes that are not a model
        raise TokenizerError(
            f"{name} is not a SentencePiece model; pass the .model file written by "
            "`python -m pipelines.train_tokenizer`"
        ) from None
    for what, piece_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id())):
        if piece_id < 0:
            raise TokenizerError(
                f"tokenizer {name} defines no {what} id; packing needs bos, eos and pad — "
                "retrain it with `python -m pipelines.train_tokenizer`"
            )
    return sp


def load_tokenizer(path):
    """Loads a SentencePiece model file.

    Args:
        path: local path of a `.model` file.

    Returns:
        sentencepiece.SentencePieceProcessor

    Raises:
        TokenizerError: missing/unreadable file, not a model, or no bos/eos/pad ids.
    """
    return tokenizer_from_bytes(_read_bytes(path), name=path)


def info_from_bytes(model_bytes, name="<bytes>"):
    """`tokenizer_info` for a model already read into memory."""
    sp = tokenizer_from_bytes(model_bytes, name)
    return {
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "vocab_size": int(sp.get_piece_size()),
        "bos_id": int(sp.bos_id()),
        "eos_id": int(sp.eos_id()),
        "pad_id": int(sp.pad_id()),
    }


def tokenizer_info(path):
    """Returns {"sha256", "vocab_size", "bos_id", "eos_id", "pad_id"} of a model file.

    This dict is what the store's manifest records and what the trainer
    checks a store against.
    """
    return info_from_bytes(_read_bytes(path), name=path)


def check_matches(vocab_size, metadata, tok_info):
    """Raises TokenizerError when `tok_info` cannot be a checkpoint's tokenizer.

    Shared by evaluation and the HF export: the vocab sizes must agree, and
    the sha256 too when the checkpoint metadata records one
    ("tokenizer_sha256", or "tokenizer": {"sha256"}).

    Args:
        vocab_size: the checkpoint's ModelConfig.vocab_size.
        metadata: the checkpoint metadata (or {}).
        tok_info: `tokenizer_info` of the tokenizer.
    """
    if vocab_size != tok_info["vocab_size"]:
        raise TokenizerError(
            f"checkpoint vocab_size={vocab_size} differs from the tokenizer's "
            f"{tok_info['vocab_size']}; pass the tokenizer the model was "
            f"trained with"
        )
    expected = metadata.get("tokenizer_sha256") or (metadata.get("tokenizer") or {}).get("sha256")
    if expected and expected != tok_info["sha256"]:
        raise TokenizerError(
            f"tokenizer sha256 {tok_info['sha256'][:12]}… differs from the "
            f"checkpoint's {expected[:12]}…; pass the tokenizer the model was "
            f"trained with"
        )
