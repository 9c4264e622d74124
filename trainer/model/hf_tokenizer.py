"""Our SentencePiece tokenizer as Hugging Face tokenizer files.

`AutoTokenizer.from_pretrained(DIR)` on the files written here gives, for any
text, `[BOS] + sp.encode(text)` (and `sp.encode(text)` with
`add_special_tokens=False`): BOS first and no EOS, which is how
`trainer.evaluate` scores and how packing starts a document.

The `tokenizer.json` is written as JSON without the `tokenizers` package: a
Unigram model over the SentencePiece pieces and scores, with byte fallback,
and the normalisation `trainer.model.tokenizer` trains with (identity, a dummy
"▁" prefix, every space as "▁", no whitespace collapsing). The whole text is
one Viterbi lattice, as in SentencePiece (no pre-tokenizer). A model trained
with other normalisation options is refused: we do not emulate them.

Known differences: text that literally contains a special piece such as
"<s>" is one special token for HF but characters for SentencePiece; and
SentencePiece sums Viterbi scores in float32, so on long texts a near tie
(~1e-5 apart) can resolve differently than in `tokenizers` (float64): 1 of
1000 LAMBADA texts in bench/lmeval_compare.py ("▁T om" vs "▁To m").
"""
from __future__ import annotations

from typing import Any

from trainer.model.tokenizer import tokenizer_from_bytes

_SPACE = "\u2581"  # SentencePiece's visible space "▁".
# Probes of the normalisation: double/leading spaces and a compatibility
# character (NFKC would turn the ligature into "fi").
_PROBES = ("a  b", " lead", "\ufb01ne", "x\ty\nz")


class HFTokenizerError(ValueError):
    """The SentencePiece model uses options the HF tokenizer files cannot reproduce."""


def _check_supported(sp, name: str) -> None:
    """Refuses models whose normalisation is not identity + dummy prefix."""
    first = sp.id_to_piece(sp.encode("a")[0]) if sp.encode("a") else ""
    roundtrip = all(sp.decode(sp.encode(p)) == p for p in _PROBES)
    # Unigram: SentencePiece gives every normal piece a negative log-prob score.
    unigram = any(sp.get_score(i) < 0 for i in range(sp.get_piece_size()))
    if not (first.startswith(_SPACE) and roundtrip and unigram):
        raise HFTokenizerError(
            f"tokenizer {name} is not a unigram model with identity normalisation, dummy "
            f"prefix and kept whitespace; only tokenizers trained by `python -m "
            f"trainer.model.tokenizer` can be exported")


def hf_tokenizer_files(model_bytes: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """{file name: bytes or JSON-able dict} of the HF tokenizer for a SentencePiece model.

    Raises:
        TokenizerError / HFTokenizerError: not a model, or unsupported options.
    """
    sp = tokenizer_from_bytes(model_bytes, name)
    _check_supported(sp, name)
    size = sp.get_piece_size()
    specials = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "pad_token": sp.pad_id(),
                "unk_token": sp.unk_id()}
    piece = {key: sp.id_to_piece(i) for key, i in specials.items()}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": sp.id_to_piece(i), "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True} for i in sorted(set(specials.values()))],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": _SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": piece["bos_token"], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": piece["bos_token"], "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": piece["bos_token"], "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {piece["bos_token"]: {"id": piece["bos_token"],
                                                    "ids": [sp.bos_id()],
                                                    "tokens": [piece["bos_token"]]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "Unigram", "unk_id": sp.unk_id(), "byte_fallback": True,
                  "vocab": [[sp.id_to_piece(i), float(sp.get_score(i))] for i in range(size)]},
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **piece,
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,  # HF's "no limit"
        "padding_side": "right",
    }
    return {"tokenizer.model": model_bytes, "tokenizer.json": tokenizer_json,
            "tokenizer_config.json": tokenizer_config, "special_tokens_map.json": piece}
