"""SIGKILL (or SIGINT) a training subprocess at step k, resume: the loss curve is
bit-exact and metrics.jsonl holds every step once."""

import os
import signal
import subprocess
import sys

import pytest
import trainer_testlib as tl

from trainer.training import metrics


def _train(store, run_dir, method, steps, kill_at=0, kill_signal="SIGKILL"):
    config = tl.tiny_config(method, store, run_dir, steps=steps)
    sets = [
        f"store.url={store}",
        f"run_dir={run_dir}",
        "log_every=1",
        "checkpoint_every=3",
        "budget.unit=flops",
        f"budget.value={config.budget.value!r}",
        f"debug.kill_at_step={kill_at}",
        f"debug.kill_signal={kill_signal}",
    ]
    cmd = [sys.executable, "-m", "trainer", "--config", f"{tl.CONFIG}:{method}"]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )


def _check_resume(tmp_path, method, steps, kill_at, kill_signal="SIGKILL"):
    store = tl.make_store(tmp_path / "store", num_rows=32)
    full = _train(store, tmp_path / "full", method, steps)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _train(store, tmp_path / "resumed", method, steps, kill_at, kill_signal)
    partial = metrics.read_metrics(str(tmp_path / "resumed"))
    if kill_signal == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert partial[-1]["step"] == kill_at  # it died after step k, not at the end
    else:
        # The loop honours the signal after the next step: it checkpoints that step,
        # prints one line and exits 128 + signum.
        stopped = kill_at + 1
        assert killed.returncode == 128 + signal.Signals[kill_signal], killed.stderr[-2000:]
        assert "Traceback" not in killed.stderr
        assert killed.stderr.strip().splitlines()[-1] == (
            f"interrupted: {kill_signal} at step {stopped}/{steps}: checkpoint saved in "
            f"{tmp_path / 'resumed' / 'checkpoints'}; re-run the same command to resume "
            f"from step {stopped}"
        )
        assert partial[-1]["step"] == stopped
    resumed = _train(store, tmp_path / "resumed", method, steps)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    restart = kill_at + 1 if kill_signal != "SIGKILL" else kill_at - kill_at % 3  # checkpoint_every
    assert f"resuming from step {restart} of {steps}" in resumed.stdout
    a = metrics.read_metrics(str(tmp_path / "full"))
    b = metrics.read_metrics(str(tmp_path / "resumed"))
    keys = ("step", "phase", "loss", "grad_norm", "lr", "cumulative_flops")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert len(a) >= kill_at + 2
    with open(tmp_path / "resumed" / "metrics.jsonl") as f:  # every step once, not re-logged
        assert len(f.readlines()) == len(b)


def test_kill_and_resume_is_bit_exact(tmp_path):
    # Killed at step 5: the newest checkpoint is step 3, so steps 4-5 are redone
    # and must come out identical (data iterator state + optimizer + RNG restored).
    _check_resume(tmp_path, "kd", steps=8, kill_at=5)


def test_sigint_checkpoints_and_resumes_bit_exact(tmp_path):
    # SIGINT after step 4: step 5 is checkpointed (checkpoint_every=3 alone would
    # have kept step 3), so nothing is redone.
    _check_resume(tmp_path, "nll", steps=7, kill_at=4, kill_signal="SIGINT")


@pytest.mark.slow
def test_kill_and_resume_across_hldf_phases(tmp_path):
    _check_resume(tmp_path, "hldf", steps=10, kill_at=7)


def test_second_signal_stops_at_once_naming_the_checkpoint_step():
    from trainer.training import loop

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup / a background job
    stop = loop.StopOnSignal(resume_step=6).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # the first one only asks
        assert stop.requested() and stop.signum == signal.SIGTERM
        with pytest.raises(loop.TrainingInterrupted, match="resume from step 6") as err:
            os.kill(os.getpid(), signal.SIGINT)
        assert err.value.signum == signal.SIGINT
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) is before
