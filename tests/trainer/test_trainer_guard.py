"""The objective-penalty guard and the schedule checks run before anything compiles."""

import json
import os

import pytest
import trainer_testlib as tl

from trainer.training import config as config_lib
from trainer.training import loop as train


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("guard") / "store", num_rows=16)


class _Stop(Exception):
    pass


def _stop_at_compile(monkeypatch):
    def no_compile(*args, **kwargs):
        raise _Stop()

    monkeypatch.setattr(train.jax, "jit", no_compile)


def test_kd_run_prints_and_warns_penalty_before_compiling(store, tmp_path, monkeypatch, capsys):
    _stop_at_compile(monkeypatch)
    config = tl.tiny_config(
        "kd", store, tmp_path / "run", steps=3, **{"loss.tail": "zero", "loss.alpha": 0.9}
    )
    with pytest.raises(_Stop):
        train.run(config)
    lines = [l for l in capsys.readouterr().out.splitlines() if "objective penalty" in l]
    assert len(lines) == 1 and lines[0].startswith("WARNING:") and "raise k" in lines[0]
    with open(tmp_path / "run" / "objective_penalty.json") as f:
        saved = json.load(f)
    assert saved["tail"] == "zero" and saved["penalty_nats"] > saved["threshold_nats"]


def test_default_bucket_tail_has_no_warning(store, tmp_path, monkeypatch, capsys):
    _stop_at_compile(monkeypatch)
    with pytest.raises(_Stop):
        train.run(tl.tiny_config("hldc", store, tmp_path / "run", steps=3))
    out = capsys.readouterr().out
    assert "objective penalty (alpha=0.7, tau=1, tail=bucket): 0.0000" in out
    assert "WARNING" not in out


def test_nll_run_prints_no_penalty(store, tmp_path, monkeypatch, capsys):
    _stop_at_compile(monkeypatch)
    with pytest.raises(_Stop):
        train.run(tl.tiny_config("nll", store, tmp_path / "run", steps=3))
    assert "objective penalty" not in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "run" / "objective_penalty.json")


@pytest.mark.parametrize(
    "sets, match",
    [
        # HLDF phase-1 warm-up longer than phase 1: refused like WSD's, before phase 1 runs.
        ({"hldf.warmup_steps": 10_000}, "phase 1 of hldf .*warmup_steps=10000 exceeds"),
        # A phase-2 WSD schedule that cannot fit must not cost a phase 1 first.
        ({"optim.warmup_steps": 10_000}, "phase 2 of hldf .*exceed total_steps"),
    ],
)
def test_hldf_schedules_fail_before_compiling(store, tmp_path, monkeypatch, sets, match):
    _stop_at_compile(monkeypatch)
    config = tl.tiny_config("hldf", store, tmp_path / "run", steps=4, **sets)
    with pytest.raises(config_lib.ConfigError, match=match):
        train.run(config)
