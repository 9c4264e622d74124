"""Launching `python -m trainer` as N `jax.distributed` processes on 127.0.0.1.

Each process gets 4 forced CPU devices, the JAX_* variables the README
documents, a dead loopback proxy (nothing may leave the machine) and a row
counter: a wrapper around `StoreReader.read_stored` (the loader's one read
per batch) appends the row ids every batch read returns to ROWS_DIR/rows_<process>.jsonl, so a test can check which rows
each process read from the store (process 0's objective-penalty sample, a
top-k-only read before training, is not a batch and is not counted).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import numpy as np
import trainer_testlib as tl
from loopback import free_port  # bench/, via tests/conftest.py

from trainer.training import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL_DEVICES = 4

# Runs trainer.__main__ with StoreReader.read_stored counting the rows of each batch.
_DRIVER = """
import json, os, sys
import numpy as np
import store
_read = store.StoreReader.read_stored
def read_stored(self, rows, names):
    if "tokens" in names:  # batches (process 0's objective-penalty sample reads topk only, via read)
        with open(os.environ["ROWS_FILE"], "a") as f:
            f.write(json.dumps(np.asarray(rows).tolist()) + "\\n")
    return _read(self, rows, names)
store.StoreReader.read_stored = read_stored
from trainer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def loopback_env(dead_port: int) -> dict:
    """Environment with every proxy variable on a dead loopback port, loopback exempt."""
    env = dict(os.environ)
    proxy = f"http://127.0.0.1:{dead_port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "grpc_proxy"):
        env[name] = proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def trainer_args(method: str, store: str, run_dir, steps: int, extra=()) -> list[str]:
    """`python -m trainer` arguments for a tiny run of about `steps` steps."""
    config = tl.tiny_config(method, store, run_dir, steps=steps)
    sets = [
        f"store.url={store}",
        f"run_dir={run_dir}",
        "log_every=1",
        "budget.unit=flops",
        f"budget.value={config.budget.value!r}",
        "data.num_threads=0",
        "data.prefetch_buffer_size=0",
        *extra,
    ]
    args = ["--config", f"{tl.CONFIG}:{method}"]
    for item in sets:
        args += ["--set", item]
    return args


@dataclasses.dataclass
class Result:
    """What one process of a launch did."""

    returncode: int
    stderr: str
    exit_time: float  # time.monotonic() when it was seen exited


def _slurm_port() -> int:
    """A free port in the range JAX's Slurm detection derives from SLURM_JOB_ID."""
    for port in range(SLURM_PORT_BASE + 1000, SLURM_PORT_BASE + 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in JAX's Slurm coordinator range")


# jax._src.clusters.slurm_cluster: port = SLURM_JOB_ID % 4096 + SLURM_PORT_BASE.
SLURM_PORT_BASE = 65535 - 2**12 + 1


def _cluster_env(index: int, count: int, port: int, slurm: bool) -> dict:
    if not slurm:
        return {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(count),
            "JAX_PROCESS_ID": str(index),
        }
    # What `srun --ntasks=2` sets on one node (the variables JAX's detection reads).
    return {
        "SLURM_JOB_ID": str(port - SLURM_PORT_BASE),
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_NTASKS": str(count),
        "SLURM_PROCID": str(index),
        "SLURM_LOCALID": str(index),
    }


def launch(
    args_per_process: list[list[str]], rows_dir, timeout_s: float = 600, slurm: bool = False
) -> list[Result]:
    """Runs one trainer process per argument list, as one jax.distributed run.

    Args:
        args_per_process: `python -m trainer` arguments of each process.
        rows_dir: where the row logs and each process's stderr go.
        timeout_s: bound on the wait for all processes to exit.
        slurm: describe the run with Slurm's variables (JAX's auto-detection)
            instead of JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.

    Kills any process still running on the way out, also when the wait fails.
    """
    port, dead = (_slurm_port() if slurm else free_port()), free_port()
    os.makedirs(rows_dir, exist_ok=True)
    procs, logs = [], []
    try:
        for index, args in enumerate(args_per_process):
            env = loopback_env(dead)
            env.update(
                {
                    "JAX_PLATFORMS": "cpu",
                    "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
                    "ROWS_FILE": os.path.join(str(rows_dir), f"rows_{index}.jsonl"),
                    **_cluster_env(index, len(args_per_process), port, slurm),
                }
            )
            for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
                if slurm:
                    env.pop(name, None)
            log = open(os.path.join(str(rows_dir), f"stderr_{index}.log"), "w+")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _DRIVER, *args, "--set", "distributed=True"],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
        exit_times = [None] * len(procs)
        deadline = time.monotonic() + timeout_s
        while None in exit_times and time.monotonic() < deadline:
            for i, proc in enumerate(procs):
                if exit_times[i] is None and proc.poll() is not None:
                    exit_times[i] = time.monotonic()
            time.sleep(0.1)
        if None in exit_times:
            raise TimeoutError(f"trainer processes still running after {timeout_s} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    results = []
    for proc, log, when in zip(procs, logs, exit_times):
        log.seek(0)
        results.append(Result(proc.returncode, log.read(), when))
        log.close()
    return results


def rows_read(rows_dir, index: int) -> list[int]:
    """Every row id process `index` read from the store, in read order."""
    path = os.path.join(str(rows_dir), f"rows_{index}.jsonl")
    if not os.path.exists(path):
        return []
    import json

    with open(path, encoding="utf-8") as f:
        return [row for line in f for row in json.loads(line)]


KEYS = ("step", "phase", "loss", "grad_norm", "lr", "cumulative_flops")


def check_resumes(
    args: list[str],
    run_dir,
    rows_dir,
    full: list[dict],
    resume_step: int,
    total_steps: int,
    rows_per_step: int = 4,
) -> None:
    """Relaunches 2 processes with `args` on a stopped run; checks the restart.

    Both must finish, metrics.jsonl must equal the uninterrupted run's `full`
    (every KEYS field of every record), and each process must re-read only the
    batches after `resume_step` (`rows_per_step` rows each per step).
    """
    for i, r in enumerate(launch([args, args], rows_dir, timeout_s=500)):
        assert r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"
    again = metrics.read_metrics(str(run_dir))
    assert [[r[k] for k in KEYS] for r in again] == [[r[k] for k in KEYS] for r in full]
    for i in range(2):
        assert len(rows_read(rows_dir, i)) == (total_steps - resume_step) * rows_per_step
    assert np.isfinite([r["loss"] for r in again]).all()
