"""A k=0 rollout store (no top-k, no draws: token_logprob + hidden layers) trains OPD and OPRD.

The store is what `python -m pipelines.dump --input-store R --k 0 --hidden-layers 1 2` writes
(tests/pipelines/test_pipelines_rollout_k0.py: the Beam dump equals this bare loop); here
it is written by the bare loop (teacher_dump.extract_rows, k=0), read back, and one trainer
step of each method runs on it (OPRD on both stored layers).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import trainer_testlib as tl

import store
import teacher_dump
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.training import loop

ROWS, T = 8, tl.SEQ


@pytest.fixture(scope="module")
def k0_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("k0")
    cfg = model_config.get_config("tiny", vocab_size=tl.VOCAB)
    model_io.save_model(root / "teacher", cfg, model.init_params(cfg, jax.random.key(1)), {})
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, tl.VOCAB, (ROWS, T)).astype(np.int32)
    mask = (np.arange(T)[None] >= rng.integers(4, T - 4, ROWS)[:, None]).astype(np.uint8)
    schema = store.StoreSchema(
        seq_len=T,
        k=0,
        vocab_size=tl.VOCAB,
        hidden_layers=(1, 2),
        hidden_dim=cfg.d_model,
        rows_per_unit=4,
        loss_mask=True,
        token_logprob=True,
    )
    teacher = teacher_dump.load_teacher(str(root / "teacher"))
    writer = store.create_store(str(root / "scored"), schema, num_rows=ROWS)
    for unit in range(writer.num_units):
        a, b = writer.unit_rows(unit)
        signal = teacher_dump.loop.concat_batches(
            teacher_dump.extract_rows(
                teacher, tokens[a:b], batch_size=4, k=0, layers=(1, 2), token_logprob=True
            )
        )
        assert not any(name.startswith(("topk", "sampled")) for name in signal)
        writer.write_unit(unit, tokens=tokens[a:b], loss_mask=mask[a:b], **signal)
    return str(root / "scored"), root


def test_k0_rollout_store_round_trips(k0_store):
    url, _ = k0_store
    reader = store.StoreReader(url)
    assert reader.schema.k == 0 and reader.schema.samples == 0
    got = reader.read(np.arange(ROWS))
    assert sorted(got) == sorted(["hidden/1", "hidden/2", "loss_mask", "tokens", "token_logprob"])
    assert (got["token_logprob"][:, -1] == 0).all() and (got["token_logprob"][:, :-1] < 0).all()


@pytest.mark.parametrize(
    "method,sets",
    [
        ("opd", {}),
        ("oprd", {"teacher.hidden_layer": 2, "onpolicy.hidden_layers": "1,2"}),
    ],
)
def test_one_step_trains_on_a_k0_store(k0_store, method, sets):
    url, root = k0_store
    run_dir = str(root / f"run_{method}")
    config = tl.tiny_config(
        method, url, run_dir, **{"log_every": 1, "optim.warmup_steps": 0, **sets}
    )
    (phase,) = loop.methods.phases(config, 4)
    assert "topk" not in phase.fields  # λ = 1: nothing reads a top-k
    per_step = loop.phase_flops_per_token(config, loop.model_config_from(config), phase)
    config.budget.value = 1.5 * per_step * config.data.batch_size * T  # one step
    loop.run(config)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        (first, *_) = [json.loads(line) for line in f]
    assert first["step"] == 1 and np.isfinite(first["loss"])
    if method == "opd":
        assert first["loss"] == first["opd"]
    else:
        assert first["hidden_mse"] == pytest.approx(
            (first["hidden_mse_l1"] + first["hidden_mse_l2"]) / 2, rel=1e-6
        )
