"""Local runner back-ends for the distributed-runner tests, on 127.0.0.1 only.

Each is a context manager that starts its processes in their own process
group, waits for them with a loop bounded in count and time, and kills the
group on exit, also when the test fails. Nothing here may reach past
loopback: `loopback_env` points every proxy variable at a dead loopback port
and exempts only 127.0.0.1 / localhost.
"""

import contextlib
import os
import signal
import subprocess
import sys

from loopback import free_port, wait_for_port  # bench/, via tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEAD_PROXY = "http://127.0.0.1:9"


def loopback_env(**extra):
    """The environment for servers and dumps: loopback only, CPU JAX, this checkout."""
    # This interpreter's bin/ first: Beam's worker pool starts SDK workers as a bare `python`.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        JAX_PLATFORMS="cpu",
        PATH=path,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        env[name] = _DEAD_PROXY
    env.update(extra)
    return env


def _spawn(args, log_path):
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=loopback_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def worker_pids(launcher_pid):
    """The pids of the Dask worker processes `dask worker --nworkers N` started.

    Its nannies live in the launcher process; each worker is a multiprocessing
    spawn child (the other child, the resource tracker, is left out).
    """
    # By session (the launcher's own, see _spawn): its tree has one more level here.
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "-s", str(launcher_pid)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line]


@contextlib.contextmanager
def dask_cluster(log_dir, num_workers=2):
    """A dask.distributed scheduler and `num_workers` worker processes (1 thread each).

    Yields:
        (address "127.0.0.1:PORT", the worker launcher's Popen).
    """
    from distributed import Client

    port = free_port()
    procs = []
    try:
        procs.append(
            _spawn(
                [
                    "-m",
                    "distributed.cli.dask_scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-dashboard",
                ],
                os.path.join(log_dir, "scheduler.log"),
            )
        )
        wait_for_port(port, procs[0], "dask scheduler", timeout_s=30)
        address = f"127.0.0.1:{port}"
        procs.append(
            _spawn(
                [
                    "-m",
                    "distributed.cli.dask_worker",
                    f"tcp://{address}",
                    "--nworkers",
                    str(num_workers),
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                os.path.join(log_dir, "workers.log"),
            )
        )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(num_workers, timeout=90)
        yield address, procs[1]
    finally:
        _stop(procs)


@contextlib.contextmanager
def beam_job_service(log_dir):
    """Beam's Python job service and an external worker pool (SDK worker processes).

    The pool starts one SDK worker process per environment the runner asks
    for (`--sdk_worker_parallelism`). Beam's pool servicer binds [::]:PORT;
    the test only ever dials 127.0.0.1.

    Yields:
        (job endpoint "127.0.0.1:PORT", worker pool endpoint "127.0.0.1:PORT").
    """
    job_port, pool_port = free_port(), free_port()
    procs = []
    try:
        procs.append(
            _spawn(
                [
                    "-m",
                    "apache_beam.runners.worker.worker_pool_main",
                    f"--service_port={pool_port}",
                ],
                os.path.join(log_dir, "worker_pool.log"),
            )
        )
        procs.append(
            _spawn(
                [
                    "-m",
                    "apache_beam.runners.portability.local_job_service_main",
                    "--port",
                    str(job_port),
                    "--staging_dir",
                    os.path.join(log_dir, "staging"),
                ],
                os.path.join(log_dir, "job_service.log"),
            )
        )
        wait_for_port(pool_port, procs[0], "beam worker pool", timeout_s=30)
        wait_for_port(job_port, procs[1], "beam job service", timeout_s=30)
        yield f"127.0.0.1:{job_port}", f"127.0.0.1:{pool_port}"
    finally:
        _stop(procs)
