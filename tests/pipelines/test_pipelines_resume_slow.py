"""Crash/resume and runner-parallelism invariance of the dump (subprocesses; slow)."""

import os
import signal
import subprocess
import sys
import time

import pipelines_testlib as lib
import pytest

import store
from pipelines import dump

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small units so that a run has many commits to interrupt.
SMALL_UNITS = ["--rows-per-unit", "2"]


@pytest.fixture(scope="module", params=[(), ("--samples", "4")], ids=["topk", "topk+sampled"])
def reference(request, corpus, tokenizer_path, teacher_path, tmp_path_factory):
    """An uninterrupted in-process run (1 worker): (argv builder, store url)."""
    directory, _ = corpus

    def argv(url, *extra):
        a = lib.dump_argv(
            os.path.join(directory, "*"), url, teacher_path, tokenizer_path, *request.param, *extra
        )
        a[a.index("--rows-per-unit") + 1] = SMALL_UNITS[1]
        return a

    url = str(tmp_path_factory.mktemp("ref") / "store")
    dump.run_dump(argv(url))
    return argv, url


def _spawn(argv):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    # Own process group: SIGKILL reaches Beam's worker processes too.
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.dump", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _committed(url):
    try:
        return len(store.open_writer(url).committed_units())
    except store.StoreError:
        return 0


def test_sigkill_mid_run_then_rerun_is_identical(reference, tmp_path):
    argv, ref_url = reference
    total = store.open_writer(ref_url).num_units
    url = str(tmp_path / "store")
    proc = _spawn(argv(url))
    deadline = time.monotonic() + 240
    while _committed(url) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        "dump finished before it could be killed: " + proc.stderr.read().decode()
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _committed(url)
    assert 3 <= done < total, (done, total)
    result = dump.run_dump(argv(url))
    assert result.counters["units_already_committed"] == done
    assert result.counters["units_committed"] == total - done
    lib.assert_stores_identical(ref_url, url)


def test_two_worker_processes_give_the_same_store(reference, tmp_path):
    argv, ref_url = reference
    url = str(tmp_path / "store")
    proc = _spawn(
        argv(url, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    )
    _, err = proc.communicate(timeout=500)
    assert proc.returncode == 0, err.decode()[-2000:]
    lib.assert_stores_identical(ref_url, url)
