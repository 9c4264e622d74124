"""Bad input: store/config mismatches fail before compiling; NaN stops the run."""

import json
import os

import pytest
import trainer_testlib as tl

from store import SchemaMismatchError
from trainer.training import checkpoint
from trainer.training import config as config_lib
from trainer.training import loop as train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("err") / "store", num_rows=16)


@pytest.mark.parametrize(
    "method, sets, match",
    [
        (
            "kd",
            {"model.vocab_size": 256},
            r"model.vocab_size=256 but the store has 512 "
            r"\(--set model.vocab_size=512\)",
        ),
        ("kd", {"data.seq_len": 64}, r"\(--set data.seq_len=32\)"),
        ("kd", {"data.k": 16}, r"data.k=16 but the store has 8 \(--set data.k=8\)"),
        ("kd", {"store.tokenizer_sha256": "cd" * 32}, "--set store.tokenizer_sha256=abab"),
        ("hldc", {"teacher.hidden_layer": 3}, r"\(--set teacher.hidden_layer=2\)"),
        ("hldf", {"teacher.d_model": 128}, r"\(--set teacher.d_model=64\)"),
    ],
)
def test_store_mismatch_fails_before_compiling(method, sets, match, store, tmp_path, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled before checking the store")

    monkeypatch.setattr(train.jax, "jit", no_compile)
    config = tl.tiny_config(method, store, tmp_path / "run", steps=3, **sets)
    with pytest.raises(SchemaMismatchError, match=match):
        train.run(config)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_all_mismatches_in_one_error_and_from_store_fixes_them(store, tmp_path):
    sets = {
        "model.vocab_size": 1024,
        "data.seq_len": 64,
        "data.k": 16,
        "teacher.hidden_layer": 3,
        "teacher.d_model": 128,
    }
    config = tl.tiny_config("hldc", store, tmp_path / "run", steps=2, **sets)
    with pytest.raises(SchemaMismatchError, match="on 5 field") as err:
        train.run(config)
    message = str(err.value)
    assert "\n" not in message and "data.from_store=True" in message
    for fix in (
        "model.vocab_size=512",
        "data.seq_len=32",
        "data.k=8",
        "teacher.hidden_layer=2",
        "teacher.d_model=64",
    ):
        assert f"--set {fix})" in message
    sets["data.from_store"] = True
    config = tl.tiny_config("hldc", store, tmp_path / "run", steps=2, **sets)
    config.budget.value = tl.budget_for_steps(tl.tiny_config("hldc", store, tmp_path, 2), 2)
    summary = train.run(config)
    assert summary["global_step"] >= 1
    # The run's resolved config (config.json) has the store's geometry; the user's is untouched.
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        saved["data"]["seq_len"],
        saved["data"]["k"],
        saved["model"]["vocab_size"],
        saved["teacher"]["hidden_layer"],
        saved["teacher"]["d_model"],
    ) == (32, 8, 512, 2, 64)
    assert config.data.seq_len == 64


def test_kd_on_tokens_only_store_is_an_error(tmp_path):
    tokens_only = tl.make_store(tmp_path / "tok", num_rows=16, k=0, layers=())
    config = tl.tiny_config("kd", tokens_only, tmp_path / "run", steps=3, **{"data.k": 0})
    with pytest.raises(config_lib.ConfigError, match="k=0"):
        train.run(config)


def test_budget_too_small_is_an_error(store, tmp_path):
    config = tl.tiny_config(
        "kd", store, tmp_path / "run", **{"budget.unit": "flops", "budget.value": 1.0}
    )
    with pytest.raises(config_lib.ConfigError, match="raise budget.value"):
        train.run(config)


def test_batch_not_divisible_by_mesh(store, tmp_path):
    config = tl.tiny_config("kd", store, tmp_path / "run", steps=3, **{"data.batch_size": 6})
    with pytest.raises(config_lib.ConfigError, match="multiple of 8"):
        train.run(config)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(store, tmp_path):
    # lr = 1e30: step 1 is finite, then the params overflow and the loss is NaN/Inf.
    config = tl.tiny_config(
        "nll",
        store,
        tmp_path / "run",
        steps=6,
        **{"optim.lr": 1e30, "log_every": 1, "checkpoint_every": 1, "optim.warmup_steps": 0},
    )
    with pytest.raises(train.TrainingDivergedError, match="last good checkpoint") as err:
        train.run(config)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "run"))
    good = ckpt.latest_step()
    assert good is not None and f"step {good})" in str(err.value)
    assert ckpt.restore_meta(good)["global_step"] == good
    ckpt.close()
    assert not os.path.exists(tmp_path / "run" / "export")


def test_cli_store_mismatch_is_one_line_exit_2(store, tmp_path):
    line = tl.cli_error_line(store, tmp_path / "run", "model.vocab_size=256")
    assert "--set model.vocab_size=512" in line and "256" in line, line


def test_resume_under_other_settings_is_refused(store, tmp_path):
    config = tl.tiny_config("nll", store, tmp_path / "run", steps=3)
    first = train.run(config)
    assert train.run(config) == first  # same settings: finished run, nothing redone
    changed = tl.tiny_config("nll", store, tmp_path / "run", steps=3, **{"optim.lr": 1e-2})
    with pytest.raises(config_lib.ConfigError, match=r"other settings \(optim.lr: .*new run_dir"):
        train.run(changed)


def test_failed_export_recovers_without_retraining(store, tmp_path, monkeypatch):
    """Training finished, the export failed: re-running (run_dir spelled relative the
    first time, absolute the second) exports from the last checkpoint, trains nothing."""
    monkeypatch.chdir(tmp_path)
    real_save = train.model_io.save_model

    def half_written_export(path, *args, **kwargs):
        os.makedirs(os.path.join(path, "params"))  # What a failed write leaves behind.
        raise OSError("No space left on device")

    monkeypatch.setattr(train.model_io, "save_model", half_written_export)
    config = tl.tiny_config("nll", store, "runs/r", steps=3)
    with pytest.raises(OSError, match="No space"):
        train.run(config)
    assert not os.path.exists(tmp_path / "runs" / "r" / "final.json")
    monkeypatch.setattr(train.model_io, "save_model", real_save)
    rows = (tmp_path / "runs" / "r" / "metrics.jsonl").read_text()
    again = tl.tiny_config("nll", store, str(tmp_path / "runs" / "r"), steps=3)
    summary = train.run(again)
    assert summary["global_step"] == 3 and "loss" in summary
    assert (tmp_path / "runs" / "r" / "metrics.jsonl").read_text() == rows  # nothing re-run
    assert train.model_io.load_config(tmp_path / "runs" / "r" / "export").vocab_size == tl.VOCAB
