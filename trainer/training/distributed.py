"""Joining a multi-process (multi-host) run: `jax.distributed` from the environment.

With `distributed=True` every process of the run calls `initialize` before
JAX touches a device. Where the process learns its place, in this order:

  1. The variables JAX documents, all three or none:
       JAX_COORDINATOR_ADDRESS  host:port of process 0's coordinator
       JAX_NUM_PROCESSES        number of processes in the run
       JAX_PROCESS_ID           this process, 0 .. JAX_NUM_PROCESSES-1
     (jax 0.10.2's `jax.distributed.initialize()` reads only the first itself,
     so they are read here and passed explicitly.) JAX_LOCAL_DEVICE_IDS, also
     JAX's name, is still read by JAX itself.
  2. None of them set: JAX's cluster auto-detection (Slurm, Open MPI, mpi4py,
     Cloud TPU, GKE/Kubernetes); outside such a cluster JAX fails with its own
     message, which is passed on as one line.

Failure behaviour (JAX's coordination service, measured with two CPU
processes on one machine): if process 0 (the coordinator) dies, the others
abort at once; if another process dies, process 0 and the rest abort once
its heartbeats have been missing for about `distributed_heartbeat_s` (JAX
prints "Terminating process because the JAX distributed service detected
fatal errors. This most likely indicates that another task died"). The exit
status is then non-zero (SIGABRT); relaunching every process with the same
command resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging
import os

import jax

from trainer.model.errors import ConfigError

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

log = logging.getLogger(__name__)


def env_params(environ=None) -> dict | None:
    """coordinator_address / num_processes / process_id from ENV_VARS.

    Returns:
        The three `jax.distributed.initialize` arguments, or None when none of
        the variables is set (then JAX's cluster auto-detection is used).

    Raises:
        ConfigError: some but not all are set, or a value is malformed.
    """
    environ = os.environ if environ is None else environ
    values = {name: environ.get(name, "") for name in ENV_VARS}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"distributed=True with {', '.join(n for n in ENV_VARS if n not in missing)} set but "
            f"{', '.join(missing)} unset; set all of {', '.join(ENV_VARS)} on every process, "
            f"or none of them to use JAX's cluster auto-detection"
        )
    address = values["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port; "
            f"use e.g. 127.0.0.1:12355 (process 0's address)"
        )
    try:
        count, index = int(values["JAX_NUM_PROCESSES"]), int(values["JAX_PROCESS_ID"])
    except ValueError:
        raise ConfigError(
            f"JAX_NUM_PROCESSES={values['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
            f"{values['JAX_PROCESS_ID']!r} must be integers"
        ) from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"JAX_PROCESS_ID={index} is outside 0..JAX_NUM_PROCESSES-1 (JAX_NUM_PROCESSES="
            f"{count}); give each process a distinct id below the process count"
        )
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(enabled: bool, heartbeat_timeout_s: int, init_timeout_s: int) -> None:
    """Joins the run's other processes (`jax.distributed.initialize`); no-op if not enabled.

    Args:
        enabled: the config field `distributed`.
        heartbeat_timeout_s: seconds of missing heartbeats after which a process
            counts as dead and the whole run aborts.
        init_timeout_s: seconds to wait for all processes to connect.

    Raises:
        ConfigError: incomplete/malformed environment, JAX could not
            work out the cluster, or this process already started JAX's devices.
    """
    if not enabled or jax.distributed.is_initialized():
        return
    params = env_params()
    try:
        jax.distributed.initialize(
            **(params or {}),
            heartbeat_timeout_seconds=heartbeat_timeout_s,
            initialization_timeout=init_timeout_s,
        )
    except ValueError as e:
        # JAX's auto-detection found no cluster ("coordinator_address should be defined").
        raise ConfigError(
            f"distributed=True but no cluster was found ({e}); set {', '.join(ENV_VARS)} on "
            f"every process (see README 'Scaling out') or run under Slurm/Open MPI/TPU"
        ) from None
    except RuntimeError as e:
        # JAX refuses once this process has already started its devices.
        raise ConfigError(
            f"distributed=True but jax.distributed could not start here ({str(e)[:120]}); "
            f"start the trainer in a fresh process, before any other JAX computation"
        ) from None
    log.warning(
        "distributed: process %d of %d, %d local / %d global devices; if a process "
        "dies the others abort within ~%ds, relaunch all to resume",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        heartbeat_timeout_s,
    )
