"""The dump on distributed Beam runners, against servers the tests start on 127.0.0.1.

The store must be byte-identical to the DirectRunner's: the Dask runner
(dask.distributed, 2 worker processes) in the fast suite; Beam's portable
path (job service + external worker pool, how Flink and Spark run it) and a
worker killed mid-dump then the same command again are slow.
"""

import os
import signal
import subprocess
import sys
import time

import clusters
import pipelines_testlib as lib
import pytest

import store
from pipelines import dump
from store import verify

HELDOUT = "0.1"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def argv_for(corpus, tokenizer_path, teacher_path):
    directory, _ = corpus

    def argv_for(url, *extra):
        return lib.dump_argv(
            os.path.join(directory, "*"),
            url,
            teacher_path,
            tokenizer_path,
            "--heldout-fraction",
            HELDOUT,
            "--heldout-store",
            url + "_heldout",
            *extra,
        )

    return argv_for


@pytest.fixture(scope="module")
def direct_store(argv_for, tmp_path_factory):
    """The reference: the DirectRunner in process."""
    url = str(tmp_path_factory.mktemp("direct") / "store")
    dump.run_dump(argv_for(url))
    return url


def _dump(argv, timeout=400):
    """`python -m pipelines.dump` in a subprocess (loopback-only environment)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.dump", *argv],
        cwd=clusters.ROOT,
        env=clusters.loopback_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_same(reference, url):
    lib.assert_stores_identical(reference, url)
    lib.assert_stores_identical(reference + "_heldout", url + "_heldout")
    assert verify.verify_store(url)["ok"]


def test_dask_runner_store_is_byte_identical(argv_for, direct_store, tmp_path):
    url = str(tmp_path / "store")
    with clusters.dask_cluster(str(tmp_path)) as (address, _):
        proc = _dump(argv_for(url, "--runner", "dask", "--dask_client_address", address))
    assert "units_committed=" in proc.stdout
    _assert_same(direct_store, url)


@pytest.mark.slow
def test_dask_runner_full_path_and_rerun_is_a_noop(argv_for, direct_store, tmp_path):
    url = str(tmp_path / "store")
    with clusters.dask_cluster(str(tmp_path)) as (address, _):
        _dump(argv_for(url, "--runner", DASK_RUNNER, "--dask_client_address", address))
        again = _dump(argv_for(url, "--runner", DASK_RUNNER, "--dask_client_address", address))
    assert "units_committed=0" in again.stdout.split()
    _assert_same(direct_store, url)


@pytest.mark.slow
def test_portable_runner_store_is_byte_identical(argv_for, direct_store, tmp_path):
    url = str(tmp_path / "store")
    with clusters.beam_job_service(str(tmp_path)) as (job_endpoint, pool_endpoint):
        _dump(
            argv_for(
                url,
                "--runner",
                "PortableRunner",
                "--job_endpoint",
                job_endpoint,
                "--environment_type",
                "EXTERNAL",
                "--environment_config",
                pool_endpoint,
                "--sdk_worker_parallelism",
                "2",
            )
        )
    _assert_same(direct_store, url)


def _committed(url):
    try:
        return len(store.open_writer(url).committed_units())
    except store.StoreError:
        return 0


@pytest.mark.slow
def test_dask_worker_killed_mid_dump_then_rerun_is_identical(argv_for, direct_store, tmp_path):
    url = str(tmp_path / "store")
    # Small units: many commits to interrupt.
    small = ["--rows-per-unit", "2"]
    reference = str(tmp_path / "reference")
    dump.run_dump(argv_for(reference, *small))
    total = store.open_writer(reference).num_units
    with clusters.dask_cluster(str(tmp_path)) as (address, workers):
        argv = argv_for(url, *small, "--runner", "dask", "--dask_client_address", address)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.dump", *argv],
            cwd=clusters.ROOT,
            env=clusters.loopback_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 300
            while _committed(url) < 3 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "dump finished before a worker could be killed"
            pids = clusters.worker_pids(workers.pid)
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
            # The nanny restarts the worker; dask reruns its lost tasks, or the run fails.
            proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert _committed(url) >= 3
        _dump(argv)  # the same command again resumes
    assert _committed(url) == total
    lib.assert_stores_identical(reference, url)
    lib.assert_stores_identical(reference + "_heldout", url + "_heldout")
    assert verify.verify_store(url)["ok"]
