"""Small versions of bench/lmeval_compare.py on a tiny model.

* held-out perplexity (needs transformers only): `trainer.evaluate`'s log_ppl
  of a tokens store of real held-out text equals the mean NLL of the exported
  model in transformers on the same rows (1e-5 nats: fp32 summation order;
  observed ~1e-8);
* the whole comparison through lm-eval (skipped without the `bench` extra):
  per task the same n and accuracy, per-choice log-likelihoods within 1e-3.
"""

import importlib.util
import json
import pathlib

import jax
import pytest

pytest.importorskip("transformers")

from trainer.evaluate import runner as evaluate
from trainer.evaluate import tasks as eval_tasks  # noqa: E402
from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import (
    hf_export,  # noqa: E402
    model_config,
    model_io,
)


def _bench():
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "lmeval_compare.py"
    spec = importlib.util.spec_from_file_location("lmeval_compare", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="module")
def tiny(wiki_tokenizer, tmp_path_factory):
    """(checkpoint, tokenizer) of a tiny random model and a tokenizer of real text."""
    from trainer.model.tokenizer import tokenizer_info

    tok = wiki_tokenizer[1]
    root = tmp_path_factory.mktemp("lmeval")
    cfg = model_config.get_config("tiny", vocab_size=600)
    model_io.save_model(
        root / "ckpt",
        cfg,
        model.init_params(cfg, jax.random.PRNGKey(0)),
        {"tokenizer_sha256": tokenizer_info(tok)["sha256"]},
    )
    return str(root / "ckpt"), tok


def test_heldout_log_ppl_equals_transformers_mean_nll(tiny, tmp_path):
    ckpt, tok = tiny
    bench = _bench()
    store = str(tmp_path / "store")
    bench.write_tokens_store(store, tok, heldout=True, seq_len=32, num_rows=8)
    hf_export.export(ckpt, str(tmp_path / "hf"), tok)
    ours = evaluate.evaluate(ckpt, tok, [evaluate.HELDOUT], store=store, batch_size=4)
    theirs = bench.transformers_mean_nll(str(tmp_path / "hf"), store, limit=None)
    assert ours["tasks"]["heldout"]["n"] == theirs["n"] == 8
    assert ours["tasks"]["heldout"]["tokens"] == theirs["tokens"] == 8 * 31
    assert abs(ours["tasks"]["heldout"]["log_ppl"] - theirs["log_ppl"]) < 1e-5


def test_lmeval_agrees_with_ours(tiny, tmp_path):
    pytest.importorskip("lm_eval")
    try:
        eval_tasks.default_data_root()
    except eval_tasks.TaskError as e:
        pytest.skip(str(e))
    ckpt, tok = tiny
    out = tmp_path / "out.json"
    assert (
        _bench().main(
            [
                "--checkpoint",
                ckpt,
                "--tokenizer",
                tok,
                "--limit",
                "4",
                "--tasks",
                "piqa,winogrande,lambada",
                "--batch-size",
                "8",
                "--work",
                str(tmp_path / "work"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert [r["task"] for r in result["tasks"]] == ["piqa", "winogrande", "lambada"]
    for row in result["tasks"]:
        assert row["n_ours"] == row["n_lmeval"] == 4, row
        assert row["diff_examples"] == 0 and row["max_abs_loglik_diff"] < 1e-3, row
    assert result["heldout"]["abs_diff"] < 1e-5
