"""Our SentencePiece tokenizer as Hugging Face tokenizer files.

`AutoTokenizer.from_pretrained(DIR)` on the files written here gives, for any
text, `[BOS] + sp.encode(text)` (and `sp.encode(text)` with
`add_special_tokens=False`): BOS first and no EOS, which is how
`trainer.evaluate` scores and how packing starts a document.

The `tokenizer.json` is a Unigram model over the SentencePiece pieces and
scores, with SentencePiece's own normaliser rebuilt from the model file's
`normalizer_spec` (read from the protobuf wire format here; sentencepiece's
generated module needs another protobuf runtime than Beam's):

* the precompiled character map (`nmt_nfkc`, SentencePiece's default, or any
  other rule; empty for `identity`) as a `Precompiled` normaliser — the same
  table SentencePiece applies;
* `remove_extra_whitespaces`: strip both ends, collapse runs of spaces;
* `add_dummy_prefix`: a "▁" before the text; `escape_whitespaces`: " " → "▁".

The whole text is one Viterbi lattice, as in SentencePiece (no
pre-tokenizer). Before anything is written the ids are checked equal to
SentencePiece's on a sample of text (`SAMPLE_TEXTS` and pieces of the model's
own vocabulary) with the `tokenizers` package (the `hf` extra). Refused, with
the reason: non-unigram models (BPE, word, char), whitespace as a suffix, and
any model whose ids the check finds different.

Known differences: text that literally contains a special piece such as
"<s>" is one special token for HF but characters for SentencePiece; and
SentencePiece sums Viterbi scores in float32, so on long texts a near tie
(~1e-5 apart) can resolve differently than in `tokenizers` (float64): 1 of
1000 LAMBADA texts in bench/lmeval_compare.py ("▁T om" vs "▁To m").
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from trainer.model.tokenizer import tokenizer_from_bytes

_SPACE = "\u2581"  # SentencePiece's visible space "▁".
# Text the exported ids are checked on: spaces (leading, trailing, runs, tabs,
# newlines), compatibility characters NFKC folds (ligature, full-width, circled
# digit, superscript), accents composed and decomposed, digits, CJK, emoji,
# bytes outside any vocabulary.
SAMPLE_TEXTS = (
    "Hello world. The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "a  b   c\td\ne\r\nf",
    " lead",
    "trail ",
    "\ufb01ne \uff21\uff22\uff23 \u2460 x\u00b2 \u2122 \u2026",
    "caf\u00e9 cafe\u0301 na\u00efve \u00c5ngstr\u00f6m",
    "1234567890 3.14159 1,000,000",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f680 \u0915\u0916 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
)
# Pieces of the model's own vocabulary joined into extra sample text.
_VOCAB_SAMPLE = 400

# sentencepiece_model.proto field numbers (ModelProto, TrainerSpec, NormalizerSpec, SentencePiece).
_MODEL_PIECES, _MODEL_TRAINER, _MODEL_NORMALIZER = 1, 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_WS_SUFFIX, _TRAINER_BYTE_FALLBACK = 3, 24, 35
_NORM_NAME, _NORM_CHARSMAP, _NORM_DUMMY_PREFIX, _NORM_EXTRA_WS, _NORM_ESCAPE_WS = 1, 2, 3, 4, 5
_PIECE_TYPE = 3
_UNIGRAM, _USER_DEFINED = 1, 4
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


class HFTokenizerError(ValueError):
    """The SentencePiece model cannot be represented by the HF tokenizer files."""


def _fields(data: bytes) -> dict[int, list]:
    """{field number: [values]} of one protobuf message (varints as ints, the rest as bytes)."""
    out: dict[int, list] = {}
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            size = varint()
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):  # fixed64 / fixed32 (e.g. a piece's float score)
            width = 8 if wire == 1 else 4
            value, i = data[i : i + width], i + width
        else:
            raise HFTokenizerError(f"unexpected protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


@dataclasses.dataclass(frozen=True)
class SpmSpec:
    """What the HF files need from a SentencePiece model proto (defaults as in the .proto)."""

    model_type: str
    whitespace_as_suffix: bool
    byte_fallback: bool
    normalizer: str
    charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    user_defined: tuple[int, ...]


def spm_spec(model_bytes: bytes) -> SpmSpec:
    """Reads the encoding-relevant fields of a serialized SentencePiece ModelProto."""
    model = _fields(model_bytes)
    trainer = _fields(model.get(_MODEL_TRAINER, [b""])[0])
    norm = _fields(model.get(_MODEL_NORMALIZER, [b""])[0])

    def flag(fields, number, default):
        return bool(fields[number][-1]) if number in fields else default

    user_defined = tuple(
        i
        for i, piece in enumerate(model.get(_MODEL_PIECES, []))
        if _fields(piece).get(_PIECE_TYPE, [1])[-1] == _USER_DEFINED
    )
    model_type = trainer.get(_TRAINER_MODEL_TYPE, [_UNIGRAM])[-1]
    return SpmSpec(
        model_type=_MODEL_TYPES.get(model_type, f"type {model_type}"),
        whitespace_as_suffix=flag(trainer, _TRAINER_WS_SUFFIX, False),
        byte_fallback=flag(trainer, _TRAINER_BYTE_FALLBACK, False),
        normalizer=norm.get(_NORM_NAME, [b""])[-1].decode("utf-8", "replace"),
        charsmap=norm.get(_NORM_CHARSMAP, [b""])[-1],
        add_dummy_prefix=flag(norm, _NORM_DUMMY_PREFIX, True),
        remove_extra_whitespaces=flag(norm, _NORM_EXTRA_WS, True),
        escape_whitespaces=flag(norm, _NORM_ESCAPE_WS, True),
        user_defined=user_defined,
    )


def _check_representable(spec: SpmSpec, name: str) -> None:
    if spec.model_type != "unigram":
        raise HFTokenizerError(
            f"tokenizer {name} is a SentencePiece {spec.model_type} model; only unigram models "
            "are exported (the HF file is a Unigram model over the same pieces and scores)"
        )
    if spec.whitespace_as_suffix:
        raise HFTokenizerError(
            f"tokenizer {name} was trained with treat_whitespace_as_suffix, which the HF "
            "normalisers cannot express (they prepend the dummy '▁', never append it)"
        )


def _normalizer(spec: SpmSpec) -> dict[str, Any] | None:
    """SentencePiece's normalisation (normalizer.cc) as a `tokenizers` normaliser."""
    steps: list[dict[str, Any]] = []
    if spec.charsmap:
        steps.append(
            {
                "type": "Precompiled",
                "precompiled_charsmap": base64.b64encode(spec.charsmap).decode("ascii"),
            }
        )
    if spec.remove_extra_whitespaces:
        # Only " " (what the character map left), as SentencePiece: `Strip` would
        # also take tabs, newlines and no-break spaces an identity map keeps.
        steps += [
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            {"type": "Replace", "pattern": {"Regex": "\\A | \\z"}, "content": ""},
        ]
    if spec.add_dummy_prefix:
        steps.append({"type": "Prepend", "prepend": _SPACE})
    if spec.escape_whitespaces:
        steps.append({"type": "Replace", "pattern": {"String": " "}, "content": _SPACE})
    return {"type": "Sequence", "normalizers": steps} if steps else None


def _decoder(spec: SpmSpec) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    if spec.escape_whitespaces:
        steps.append({"type": "Replace", "pattern": {"String": _SPACE}, "content": " "})
    steps += [{"type": "ByteFallback"}, {"type": "Fuse"}]
    if spec.add_dummy_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _sample_texts(sp) -> list[str]:
    """SAMPLE_TEXTS plus runs of the model's own pieces (spread over its vocabulary)."""
    size = sp.get_piece_size()
    step = max(1, size // _VOCAB_SAMPLE)
    words = [
        sp.id_to_piece(i).replace(_SPACE, " ")
        for i in range(0, size, step)
        if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))
    ]
    runs = [" ".join(words[j : j + 20]) for j in range(0, len(words), 20)]
    return [*SAMPLE_TEXTS, *runs]


def check_ids(tokenizer_json: dict[str, Any], sp, name: str) -> int:
    """Raises HFTokenizerError unless `tokenizers` gives SentencePiece's ids on the sample.

    Returns:
        The number of texts compared.
    """
    try:
        import tokenizers
    except ImportError:
        raise HFTokenizerError(
            "checking the exported tokenizer's ids needs the `tokenizers` package; install it "
            "with `pip install -e '.[hf]'` (or export without --tokenizer)"
        ) from None
    hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
    texts = _sample_texts(sp)
    for text in texts:
        ours, theirs = sp.encode(text), hf.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            where = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                min(len(ours), len(theirs)),
            )
            raise HFTokenizerError(
                f"tokenizer {name} cannot be represented exactly: on the text {text[:60]!r} "
                f"SentencePiece gives ids {ours[where : where + 4]} where the HF tokenizer gives "
                f"{theirs[where : where + 4]} (position {where}); export without --tokenizer"
            )
    return len(texts)


def hf_tokenizer_files(model_bytes: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """{file name: bytes or JSON-able dict} of the HF tokenizer for a SentencePiece model.

    Raises:
        TokenizerError / HFTokenizerError: not a model, not representable, or
            ids that differ from SentencePiece's on the sample text.
    """
    sp = tokenizer_from_bytes(model_bytes, name)
    spec = spm_spec(model_bytes)
    _check_representable(spec, name)
    size = sp.get_piece_size()
    specials = {
        "bos_token": sp.bos_id(),
        "eos_token": sp.eos_id(),
        "pad_token": sp.pad_id(),
        "unk_token": sp.unk_id(),
    }
    piece = {key: sp.id_to_piece(i) for key, i in specials.items() if i >= 0}
    special_ids = sorted({i for i in specials.values() if i >= 0})
    added = [
        {
            "id": i,
            "content": sp.id_to_piece(i),
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in special_ids
    ]
    # SentencePiece matches user-defined pieces whole, before the lattice.
    added += [
        {
            "id": i,
            "content": sp.id_to_piece(i),
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
        for i in spec.user_defined
    ]
    bos = piece.get("bos_token")
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": _normalizer(spec),
        "pre_tokenizer": None,
        "post_processor": None
        if bos is None
        else {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}},
        },
        "decoder": _decoder(spec),
        "model": {
            "type": "Unigram",
            "unk_id": sp.unk_id(),
            "byte_fallback": spec.byte_fallback,
            "vocab": [[sp.id_to_piece(i), float(sp.get_score(i))] for i in range(size)],
        },
    }
    check_ids(tokenizer_json, sp, name)  # Before the caller writes anything.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **piece,
        "add_bos_token": bos is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,  # HF's "no limit"
        "padding_side": "right",
    }
    return {
        "tokenizer.model": model_bytes,
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": piece,
    }
