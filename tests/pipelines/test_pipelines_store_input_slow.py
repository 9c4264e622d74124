"""`--input-store` killed mid-run (SIGKILL of the process group) then rerun: byte-identical (slow)."""

import os
import signal
import subprocess
import sys
import time

import pipelines_testlib as lib
import pytest
import test_pipelines_store_input as store_input_tests

import store
from pipelines import dump

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _committed(url):
    try:
        return len(store.open_writer(url).committed_units())
    except store.StoreError:
        return 0


def test_sigkill_mid_run_then_rerun_is_identical(tokenizer_path, teacher_path, tmp_path):
    in_url, *_ = store_input_tests._rollouts(
        tmp_path / "rollouts", store_input_tests._tok_info(tokenizer_path), num_rows=40
    )

    def argv(url):
        a = store_input_tests._argv(in_url, url, teacher_path, "--samples", "4")
        a[a.index("--rows-per-unit") + 1] = "2"  # many commits to interrupt
        return a

    ref_url = str(tmp_path / "reference")
    dump.run_dump(argv(ref_url))
    total = store.open_writer(ref_url).num_units
    url = str(tmp_path / "store")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    # Own process group: SIGKILL reaches Beam's worker processes too.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.dump", *argv(url)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
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
