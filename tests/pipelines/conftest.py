"""Session fixtures for the pipelines tests: a tiny corpus, tokenizer and random teacher."""

import os

import jax
import pipelines_testlib as lib
import pytest

from pipelines import inputs
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io, tokenizer


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(directory, documents in canonical order) of a 3-file, 3-format corpus."""
    directory = str(tmp_path_factory.mktemp("corpus"))
    docs = lib.write_corpus(directory)
    return directory, docs


@pytest.fixture(scope="session")
def tokenizer_path(corpus, tmp_path_factory):
    directory, _ = corpus
    prefix = str(tmp_path_factory.mktemp("tok") / "tok")
    return tokenizer.train_tokenizer(
        inputs.iter_corpus([os.path.join(directory, "*")]),
        prefix,
        vocab_size=lib.VOCAB,
        num_threads=1,
    )


def _save_teacher(path, vocab_size):
    cfg = model_config.get_config(
        "tiny",
        vocab_size=vocab_size,
        num_layers=2,
        d_model=32,
        mlp_dim=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    model_io.save_model(path, cfg, model.init_params(cfg, jax.random.key(0)))
    return path


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory):
    """A random 2-layer teacher (d=32) with the tokenizer's vocabulary."""
    return _save_teacher(str(tmp_path_factory.mktemp("teacher") / "ckpt"), lib.VOCAB)


@pytest.fixture(scope="session")
def wrong_vocab_teacher_path(tmp_path_factory):
    return _save_teacher(str(tmp_path_factory.mktemp("teacher_v") / "ckpt"), lib.VOCAB + 128)
