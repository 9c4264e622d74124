"""SIGKILL a training subprocess at step k, resume: the loss curve is bit-exact."""
import os
import signal
import subprocess
import sys

import pytest

import trainer_testlib as tl
from trainer.training import metrics


def _train(store, run_dir, method, steps, kill_at=0):
    config = tl.tiny_config(method, store, run_dir, steps=steps)
    sets = [f"store.url={store}", f"run_dir={run_dir}", "log_every=1", "checkpoint_every=3",
            f"budget.unit=flops", f"budget.value={config.budget.value!r}",
            f"debug.kill_at_step={kill_at}"]
    cmd = [sys.executable, "-m", "trainer", "--config", f"{tl.CONFIG}:{method}"]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _check_resume(tmp_path, method, steps, kill_at):
    store = tl.make_store(tmp_path / "store", num_rows=32)
    full = _train(store, tmp_path / "full", method, steps)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _train(store, tmp_path / "resumed", method, steps, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = metrics.read_metrics(str(tmp_path / "resumed"))
    assert partial[-1]["step"] == kill_at  # it died after step k, not at the end
    resumed = _train(store, tmp_path / "resumed", method, steps)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = metrics.read_metrics(str(tmp_path / "full"))
    b = metrics.read_metrics(str(tmp_path / "resumed"))
    keys = ("step", "phase", "loss", "grad_norm", "lr", "cumulative_flops")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert len(a) >= kill_at + 2


def test_kill_and_resume_is_bit_exact(tmp_path):
    # Killed at step 5: the newest checkpoint is step 3, so steps 4-5 are redone
    # and must come out identical (data iterator state + optimizer + RNG restored).
    _check_resume(tmp_path, "kd", steps=8, kill_at=5)


@pytest.mark.slow
def test_kill_and_resume_across_hldf_phases(tmp_path):
    _check_resume(tmp_path, "hldf", steps=10, kill_at=7)
