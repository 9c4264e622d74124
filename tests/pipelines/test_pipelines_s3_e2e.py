"""End to end on s3:// (moto on loopback): dump → inspect/verify/stats → a few student steps → evaluate.

The dump, the trainer and evaluation only get the URL; the store package puts
the endpoint from AWS_ENDPOINT_URL into TensorStore's spec.
"""

import os

import pipelines_testlib as lib
import pytest
from s3_loopback import (
    make_bucket,
    moto_server,
    s3_env,
)  # bench/, on the path via tests/conftest.py

from pipelines import dump
from store.cli import main as store_cli


@pytest.mark.slow  # ~2 min on the shared box: a dump, 3 student steps and an evaluation over HTTP
def test_dump_inspect_train_evaluate_on_s3(
    corpus, tokenizer_path, teacher_path, tmp_path, monkeypatch, capsys
):
    from trainer.evaluate import runner as evaluate
    from trainer.training import loop as train
    from trainer.training.config import load_config

    directory, _ = corpus
    with moto_server() as endpoint:
        make_bucket(endpoint, "bkt")
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        url, heldout = "s3://bkt/e2e/store", "s3://bkt/e2e/heldout"
        dump.run_dump(
            lib.dump_argv(
                os.path.join(directory, "*"),
                url,
                teacher_path,
                tokenizer_path,
                "--heldout-fraction",
                "0.2",
                "--heldout-store",
                heldout,
            )
        )
        for verb in ("inspect", "verify", "stats"):
            assert store_cli([verb, url]) == 0, verb
        assert "OK:" in capsys.readouterr().out
        config = load_config(
            "trainer/configs/tiny.py:kd",
            [
                f"store.url={url}",
                f"run_dir={tmp_path / 'run'}",
                f"model.vocab_size={lib.VOCAB}",
                "teacher.hidden_layer=1",
                "teacher.d_model=32",
                "budget.unit=flops",
            ],
        )
        per_token = train.flop_counts(config, train.model_config_from(config))["flops_per_token"][
            "nll"
        ]
        config.budget.value = float(per_token * config.data.batch_size * config.data.seq_len * 3.5)
        summary = train.run(config)
        assert summary["global_step"] == 3
        result = evaluate.evaluate(
            str(tmp_path / "run"), tokenizer_path, ["heldout"], store=heldout, limit=8
        )
        assert result["tasks"]["heldout"]["log_ppl"] > 0 and result["tasks"]["heldout"]["n"] == 8
