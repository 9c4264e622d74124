"""SIGINT to ONE process of a 2-process run: both stop at the same step, together.

One process alone (1, then 0) sends itself SIGINT after step 3 (`debug.kill_at_step` with
`debug.kill_signal=SIGINT`, given to that process only). With log_every=2 the
processes agree on stopping at logged steps (trainer.training.interrupt), so
both stop after step 4: both checkpoint step 4 together (checkpoint_every=5
alone would not have), print the same one line and exit 130. Relaunching both
with the original command resumes from step 4 and must reproduce the
uninterrupted 2-process curve exactly. The fast tests check the agreement
itself (one gathered flag, a single process pays nothing) without processes.
"""

import os
import signal

import distributed_testlib as dl
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.training import interrupt, metrics

STEPS = 8
SIGNAL_AT = 3
STOPPED_AT = 4  # The next logged step (log_every=2) after the signal.
# Both processes leave the same step's checkpoint barrier and exit; the bound
# only has to show neither waits for a timeout (heartbeat: 100 s by default).
EXIT_SPREAD_S = 30
SETS = ("log_every=2", "checkpoint_every=5")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed_interrupt")
    store = tl.make_store(tmp / "store", num_rows=64)
    args = dl.trainer_args("kd", store, tmp / "full", STEPS, SETS)
    for i, r in enumerate(dl.launch([args, args], tmp / "rows_full", timeout_s=500)):
        assert r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"
    return store, metrics.read_metrics(str(tmp / "full"))


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_sigint_to_one_process_stops_both_at_one_step_and_resumes(uninterrupted, tmp_path, victim):
    store, full = uninterrupted
    run_dir = tmp_path / "run"
    args = dl.trainer_args("kd", store, run_dir, STEPS, SETS)
    signalled = [
        args
        + (
            ["--set", f"debug.kill_at_step={SIGNAL_AT}", "--set", "debug.kill_signal=SIGINT"]
            if i == victim
            else []
        )
        for i in range(2)
    ]
    results = dl.launch(signalled, tmp_path / "rows_signalled", timeout_s=300)
    line = (
        f"interrupted: SIGINT at step {STOPPED_AT}/{STEPS}: checkpoint saved in "
        f"{run_dir / 'checkpoints'}; re-run the same command to resume from step "
        f"{STOPPED_AT}"
    )
    for i, r in enumerate(results):
        assert r.returncode == 128 + signal.SIGINT, f"process {i}: {r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"process {i}: {r.stderr[-3000:]}"
        assert r.stderr.strip().splitlines()[-1] == line, f"process {i}: {r.stderr[-3000:]}"
    spread = abs(results[0].exit_time - results[1].exit_time)
    print(f"the processes exited {spread:.1f} s apart")
    assert spread < EXIT_SPREAD_S
    assert sorted(int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit()) == [
        STOPPED_AT
    ]
    assert metrics.read_metrics(str(run_dir))[-1]["step"] == STOPPED_AT

    # Nothing redone: the restart reads only the batches after step 4.
    dl.check_resumes(args, run_dir, tmp_path / "rows_resumed", full, STOPPED_AT, STEPS)


def _two_processes(monkeypatch, gathered):
    """Makes StopOnSignal see 2 processes whose gathered flags `gathered()` returns."""
    calls = []

    def allgather(flag):
        calls.append(int(flag))
        return np.asarray(gathered(), np.int32)

    monkeypatch.setattr(interrupt.jax, "process_count", lambda: 2)
    monkeypatch.setattr(interrupt.multihost_utils, "process_allgather", allgather)
    return calls


def test_any_process_flag_stops_every_process(monkeypatch):
    stop = interrupt.StopOnSignal(resume_step=0)
    calls = _two_processes(monkeypatch, lambda: [0, int(signal.SIGTERM)])
    assert stop.requested() and stop.signum == signal.SIGTERM
    assert calls == [0]  # this process shared "not asked"; the other's flag decided


def test_a_signal_during_the_gather_waits_for_the_next_agreement(monkeypatch):
    # The signal lands after this process shared its flag: the others saw 0, so
    # stopping now would leave them stepping alone. It is shared next time.
    stop = interrupt.StopOnSignal(resume_step=0)

    def gathered():
        stop._handle(signal.SIGINT, None)  # Arrives mid-gather.
        return [0, 0]

    calls = _two_processes(monkeypatch, gathered)
    assert not stop.requested()
    monkeypatch.setattr(
        interrupt.multihost_utils,
        "process_allgather",
        lambda flag: np.asarray([int(flag), 0], np.int32),
    )
    assert stop.requested() and stop.signum == signal.SIGINT
    assert calls == [0]


def test_one_process_decides_alone_without_a_collective(monkeypatch):
    def no_collective(flag):
        raise AssertionError("a single-process run must not gather")

    monkeypatch.setattr(interrupt.multihost_utils, "process_allgather", no_collective)
    stop = interrupt.StopOnSignal(resume_step=0)
    assert not stop.requested()
    stop._handle(signal.SIGINT, None)
    assert stop.requested()
