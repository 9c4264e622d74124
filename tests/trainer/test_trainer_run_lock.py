"""One owner per run directory (trainer.training.run_lock) and where run_dir may lie."""

import json
import os
import socket
import subprocess
import sys
import time

import distributed_testlib as dl
import pytest
import trainer_testlib as tl

from trainer.training import config as config_lib
from trainer.training import loop as train
from trainer.training import run_lock


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("lock") / "store", num_rows=16)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # Reaped: no process has it (until the pid wraps around).


def _write_lock(run_dir, **fields):
    os.makedirs(run_dir, exist_ok=True)
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": "2026-12-06T05:00:00Z",
        "role": "trainer",
        "boot_id": run_lock._boot_id(),
        "process_start": run_lock._process_start(os.getpid()),
        "token": "x",
        **fields,
    }
    with open(os.path.join(run_dir, run_lock.LOCK_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f)


def test_second_owner_is_refused_naming_the_first(tmp_path):
    first = run_lock.RunDirLock(str(tmp_path / "run")).acquire()
    with pytest.raises(
        run_lock.RunDirLockedError,
        match=rf"in use by trainer pid {os.getpid()} on host "
        rf"{socket.gethostname()} \(started .*; wait for it",
    ):
        run_lock.RunDirLock(str(tmp_path / "run")).acquire()
    assert os.path.exists(tmp_path / "run" / "run.lock")
    first.release()
    assert os.listdir(tmp_path / "run") == []  # Released: nothing left behind.
    with run_lock.RunDirLock(str(tmp_path / "run"), role="evaluate"):
        assert run_lock.live_owner(str(tmp_path / "run"))["role"] == "evaluate"
    assert run_lock.live_owner(str(tmp_path / "run")) is None


@pytest.mark.parametrize(
    "stale",
    [
        {"pid": "dead"},  # SIGKILLed owner: no such pid
        {"pid": "zombie"},  # SIGKILLed, its parent not waited yet
        {"process_start": "1"},  # our pid, but a process started later
        {"boot_id": "another-boot"},  # written before a reboot
    ],
)
def test_stale_lock_on_this_host_is_taken_over(tmp_path, stale, caplog):
    zombie = None
    if stale.get("pid") == "dead":
        stale = {"pid": _dead_pid()}
    elif stale.get("pid") == "zombie":
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        while run_lock._stat_fields(zombie.pid)[:1] != ["Z"]:  # exited, not reaped
            time.sleep(0.05)
        stale = {"pid": zombie.pid, "process_start": run_lock._process_start(zombie.pid)}
    _write_lock(tmp_path / "run", **stale)
    try:
        lock = run_lock.RunDirLock(str(tmp_path / "run")).acquire()
    finally:
        if zombie is not None:
            zombie.wait()
    assert run_lock.read_lock(str(tmp_path / "run"))["token"] == lock.info["token"]
    assert "removed the stale lock" in caplog.text
    lock.release()


def test_lock_of_another_host_is_respected_with_the_fix(tmp_path):
    _write_lock(tmp_path / "run", host="elsewhere", pid=_dead_pid())
    with pytest.raises(
        run_lock.RunDirLockedError,
        match=r"on host elsewhere .*if that process is gone, delete .*run.lock\)",
    ):
        run_lock.RunDirLock(str(tmp_path / "run")).acquire()


def test_trainer_holds_the_lock_before_config_json_and_releases_it(store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    seen = []
    real_check = config_lib.check_same_config_on_resume

    def check(config, path):
        seen.append((run_lock.read_lock(path)["pid"], os.path.exists(run_dir / "config.json")))
        return real_check(config, path)

    monkeypatch.setattr(config_lib, "check_same_config_on_resume", check)
    train.run(tl.tiny_config("nll", store, run_dir, steps=2))
    assert seen == [(os.getpid(), False)]
    assert not os.path.exists(run_dir / "run.lock")
    # Released on an exception too (here: resuming under other settings is refused).
    changed = tl.tiny_config("nll", store, run_dir, steps=2, **{"optim.lr": 1e-2})
    with pytest.raises(config_lib.ConfigError, match="other settings"):
        train.run(changed)
    assert not os.path.exists(run_dir / "run.lock")


def test_lock_released_on_sigint(store, tmp_path):
    config = tl.tiny_config(
        "nll",
        store,
        tmp_path / "run",
        steps=4,
        **{"debug.kill_at_step": 2, "debug.kill_signal": "SIGINT"},
    )
    with pytest.raises(train.TrainingInterrupted):
        train.run(config)
    assert not os.path.exists(tmp_path / "run" / "run.lock")


def test_second_trainer_exits_2_before_writing_anything(store, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from trainer.training import run_lock; "
            f"run_lock.RunDirLock({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = tl.cli_error_line(store, tmp_path / "run")
        assert line.startswith("error: run_dir ") and f"in use by trainer pid {holder.pid}" in line
        assert os.listdir(tmp_path / "run") == ["run.lock"]  # no config.json, metrics, ...
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.parametrize(
    "where, match",
    [
        ("file", r"run_dir .*/afile exists and is not a directory; pass a new --set run_dir"),
        ("in_store", r"is inside the Zarr store .*/store; .*outside it"),
        ("store_itself", r"run_dir .*/store is the Zarr store itself; .*outside it"),
        ("holds_store", r"run_dir .*/outer contains the store .*; pass --set run_dir=DIR outside"),
    ],
)
def test_run_dir_placement_is_refused_and_nothing_created(store, tmp_path, where, match):
    (tmp_path / "afile").write_text("keep me")
    inner = (
        tl.make_store(tmp_path / "outer" / "s", num_rows=16) if where == "holds_store" else store
    )
    run_dir = {
        "file": tmp_path / "afile",
        "in_store": os.path.join(store, "runs", "r"),
        "store_itself": store,
        "holds_store": tmp_path / "outer",
    }[where]
    before = sorted(os.listdir(store))
    with pytest.raises(run_lock.RunDirError, match=match):
        train.run(tl.tiny_config("nll", inner, run_dir, steps=2))
    assert sorted(os.listdir(store)) == before and (tmp_path / "afile").read_text() == "keep me"


def test_cli_run_dir_that_is_a_file_is_one_line(store, tmp_path):
    (tmp_path / "afile").write_text("keep me")
    line = tl.cli_error_line(store, tmp_path / "afile")
    assert "exists and is not a directory" in line and (tmp_path / "afile").read_text() == "keep me"


def test_cli_absurd_budget_is_one_line_and_creates_nothing(store, tmp_path):
    line = tl.cli_error_line(store, tmp_path / "run", "budget.value=1e30")
    assert "more than the 2147483647 a run can count; lower budget.value" in line, line
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_multi_process_run_is_refused_by_process_0_and_all_stop(store, tmp_path):
    """Process 0 owns the lock for a jax.distributed run: both processes exit 2."""
    held = run_lock.RunDirLock(str(tmp_path / "run")).acquire()  # This test process owns it.
    try:
        args = dl.trainer_args("nll", store, tmp_path / "run", 2)
        results = dl.launch([args, args], tmp_path / "rows", timeout_s=300)
    finally:
        held.release()
    assert [r.returncode for r in results] == [2, 2], [r.stderr[-2000:] for r in results]
    assert f"in use by trainer pid {os.getpid()}" in results[0].stderr
    assert "process 0 could not take the run's lock" in results[1].stderr
    assert os.listdir(tmp_path / "run") == []


def test_evaluate_export_and_sweep_refuse_a_locked_directory(store, tmp_path, capsys):
    """Evaluate / export_hf read export/, which the owner is writing; a second sweep on an
    --out would start every point again: each says who owns the directory and stops."""
    from trainer import export_hf, sweep
    from trainer.evaluate import cli as evaluate_cli

    held = run_lock.RunDirLock(str(tmp_path / "run")).acquire()
    sweep_held = run_lock.RunDirLock(str(tmp_path / "sw"), role="sweep").acquire()
    try:
        for cli in (
            lambda: evaluate_cli.main(
                ["--checkpoint", str(tmp_path / "run"), "--tasks", "heldout", "--store", store]
            ),
            lambda: export_hf.main(
                ["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]
            ),
        ):
            rc = cli()
            err = capsys.readouterr().err.strip()
            assert rc == 2 and "\n" not in err, err
            assert f"in use by trainer pid {os.getpid()}" in err and "after it finishes" in err
        assert not os.path.exists(tmp_path / "hf")
        rc = sweep.main(
            [
                "--config",
                f"{tl.CONFIG}:nll",
                "--out",
                str(tmp_path / "sw"),
                "--grid",
                "optim.lr=1e-3",
                "--set",
                f"store.url={store}",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"in use by sweep pid {os.getpid()}" in err, err
        assert os.listdir(tmp_path / "sw") == ["run.lock"]  # no point was started
    finally:
        held.release()
        sweep_held.release()
