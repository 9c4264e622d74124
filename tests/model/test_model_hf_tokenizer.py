"""SentencePiece models as Hugging Face tokenizer files (`trainer.model.hf_tokenizer`).

* SentencePiece's defaults (`nmt_nfkc`, extra whitespace removed, no byte
  fallback) and our trainer's (`identity`, whitespace kept, byte fallback)
  both export, and `tokenizers` then gives SentencePiece's ids on Wikipedia
  text the exporter never saw (the reference is SentencePiece itself);
* what cannot be represented is refused naming why (a BPE model), and so is a
  tokenizer.json whose ids differ (a normaliser broken on purpose) — before
  anything is written.
"""

import io

import pytest
import sentencepiece as spm

tokenizers = pytest.importorskip("tokenizers")

from scripts import demo_corpus  # noqa: E402
from trainer.model import hf_tokenizer  # noqa: E402

_IDS = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)  # what packing needs (Gemma's ids)


@pytest.fixture(scope="module")
def docs():
    return demo_corpus.load_documents(500)


def _train(docs, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs[:300]),
        model_writer=model,
        vocab_size=600,
        minloglevel=2,
        num_threads=1,
        **_IDS,
        **options,
    )
    return model.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        dict(model_type="unigram"),  # SentencePiece's defaults: nmt_nfkc, whitespace removed
        dict(
            model_type="unigram",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            byte_fallback=True,
        ),  # trainer.model.tokenizer's
    ],
    ids=["nmt_nfkc_defaults", "identity_ours"],
)
def test_exported_ids_equal_sentencepiece_on_unseen_text(docs, options):
    model_bytes = _train(docs, **options)
    files = hf_tokenizer.hf_tokenizer_files(model_bytes, "tok")
    import json

    hf = tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    texts = docs[300:500] + ["  two  spaces\tand a tab\n", "\ufb01 \uff21 \u2460"]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text), text
    assert hf.encode("a b").ids[0] == sp.bos_id()  # BOS first, as trainer.evaluate scores


def test_a_bpe_model_is_refused_naming_why(docs):
    with pytest.raises(hf_tokenizer.HFTokenizerError, match="bpe model; only unigram"):
        hf_tokenizer.hf_tokenizer_files(_train(docs, model_type="bpe"), "tok")


def test_ids_that_differ_are_refused_before_writing(docs, monkeypatch):
    # Without the character map an nmt_nfkc model's ids differ on NFKC text.
    original = hf_tokenizer._normalizer
    monkeypatch.setattr(
        hf_tokenizer,
        "_normalizer",
        lambda spec: original(hf_tokenizer.dataclasses.replace(spec, charsmap=b"")),
    )
    with pytest.raises(hf_tokenizer.HFTokenizerError, match="cannot be represented exactly"):
        hf_tokenizer.hf_tokenizer_files(_train(docs, model_type="unigram"), "tok")
