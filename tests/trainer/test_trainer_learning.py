"""A few hundred KD steps on a tiny bigram-teacher store lower the KL (slow)."""

import pytest
import trainer_testlib as tl

from trainer.training import loop as train
from trainer.training import metrics


@pytest.mark.slow
def test_kd_lowers_the_kl(tmp_path):
    store = tl.make_store(tmp_path / "store", num_rows=64)
    config = tl.tiny_config(
        "kd",
        store,
        tmp_path / "run",
        steps=300,
        **{"log_every": 25, "checkpoint_every": 1000, "optim.warmup_steps": 20},
    )
    train.run(config)
    records = metrics.read_metrics(str(tmp_path / "run"))
    first, last = records[0], records[-1]
    assert last["step"] >= 290
    assert last["kd"] < 0.6 * first["kd"], (first["kd"], last["kd"])
    # Measured 2026-12-01 with the default objective (alpha=0.7, tail=bucket): 0.160 -> 0.355.
    # The bound was +0.2 under the old alpha=0.9 default, which weighted the KL term more;
    # lower it only for a change of objective or model, never to pass a regression.
    assert last["top1_agreement"] > first["top1_agreement"] + 0.15
