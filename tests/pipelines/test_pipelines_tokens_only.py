"""`python -m pipelines.dump` without --teacher: a tokens-only store (k=0).

This is how a teacher's own pre-training data is made (the demo does it), so
it must give exactly the spine a teacher dump would have written.
"""

import os

import numpy as np
import pipelines_testlib as lib
import pytest

import store
from pipelines import dump
from pipelines.errors import OptionsError


def _argv(directory, url, tokenizer_path, *extra):
    argv = lib.dump_argv(os.path.join(directory, "*"), url, "unused", tokenizer_path, *extra)
    for flag in ("--teacher", "--k", "--batch-size"):  # teacher-only flags are refused here
        i = argv.index(flag)
        argv = argv[:i] + argv[i + 2 :]
    return argv


def test_tokens_only_store_is_the_spine(corpus, tokenizer_path, tmp_path):
    directory, docs = corpus
    url = str(tmp_path / "tokens")
    result = dump.run_dump(_argv(directory, url, tokenizer_path))
    reader = store.StoreReader(url)
    assert (
        reader.schema.k == 0 and reader.schema.hidden_layers == () and reader.schema.teacher == {}
    )
    assert result.plan.teacher_cfg is None
    rows = lib.reference_rows(docs, tokenizer_path)
    np.testing.assert_array_equal(
        reader.read(np.arange(len(rows)), fields=("tokens",))["tokens"], rows
    )
    assert result.counters["units_committed"] == reader.num_units
    # Rerunning resumes: nothing is rewritten.
    again = dump.run_dump(_argv(directory, url, tokenizer_path))
    assert again.counters.get("units_committed", 0) == 0


def test_hidden_layers_without_teacher_is_refused(corpus, tokenizer_path, tmp_path):
    directory, _ = corpus
    with pytest.raises(OptionsError, match="--hidden-layers needs --teacher"):
        dump.run_dump(_argv(directory, str(tmp_path / "s"), tokenizer_path, "--hidden-layers", "1"))
    assert not os.path.exists(tmp_path / "s")


def test_teacher_trained_with_another_tokenizer_is_refused(corpus, tokenizer_path, tmp_path):
    """Same vocab size, different tokenizer: the trainer's export metadata
    records the tokenizer sha256, and the launcher compares it."""
    import jax

    from pipelines.errors import VocabMismatchError
    from trainer.model import gemma3 as model
    from trainer.model import model_config, model_io

    directory, _ = corpus
    cfg = model_config.get_config(
        "tiny",
        vocab_size=lib.VOCAB,
        num_layers=2,
        d_model=32,
        mlp_dim=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    teacher = str(tmp_path / "teacher")
    model_io.save_model(
        teacher,
        cfg,
        model.init_params(cfg, jax.random.key(0)),
        metadata={"tokenizer_sha256": "ab" * 32},
    )
    argv = lib.dump_argv(os.path.join(directory, "*"), str(tmp_path / "s"), teacher, tokenizer_path)
    with pytest.raises(VocabMismatchError, match="trained with tokenizer sha256 abababababab"):
        dump.run_dump(argv)
    assert not os.path.exists(tmp_path / "s")
