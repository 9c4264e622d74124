"""Running out of memory: XLA's RESOURCE_EXHAUSTED and a low `ulimit -v` give a line, not
a bare traceback or abort (trainer.training.memory)."""

import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import trainer_testlib as tl

from trainer import __main__ as cli
from trainer.training import loop as train
from trainer.training import memory

# More than any machine has: XLA's CPU client refuses it at once with RESOURCE_EXHAUSTED.
_HUGE = 2**50


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("mem") / "store", num_rows=16)


def _real_exhaustion():
    """A real RESOURCE_EXHAUSTED from XLA (not a hand-made exception)."""
    try:
        jax.jit(lambda: jnp.zeros((_HUGE,), jnp.uint8))().block_until_ready()
    except jax.errors.JaxRuntimeError as e:
        return e
    raise AssertionError("XLA allocated 1 PiB")


def test_exhaustion_is_recognised_and_other_errors_are_not():
    assert memory.is_resource_exhausted(_real_exhaustion())
    assert not memory.is_resource_exhausted(RuntimeError("RESOURCE_EXHAUSTED"))
    assert not memory.is_resource_exhausted(jax.errors.JaxRuntimeError("INTERNAL: other"))
    assert memory.is_resource_exhausted(
        jax.errors.JaxRuntimeError(
            "INTERNAL: Error dispatching computation: Out of memory allocating 8 bytes."
        )
    )


def _oom_step(
    config,
    model_cfg,
    plan,
    optimizer,
    lr_schedule,
    mesh,
    state_shardings,
    batch_keys_ndim,
    encoding,
):
    """The trainer's own loop calls this as its step; XLA then runs out of memory for real,
    asynchronously (at dispatch nothing fails; reading the metrics raises), as a step
    whose temporaries do not fit would. A cumsum materialises its 1 PiB operand."""

    def step(state, batch):
        big = jnp.cumsum(jnp.broadcast_to(state.step.astype(jnp.uint8), (_HUGE,)))
        return state, {"loss": big[-1].astype(jnp.float32)}

    return jax.jit(step)


def test_step_out_of_memory_names_step_and_cures(store, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "make_train_step", _oom_step)
    config = tl.tiny_config("nll", store, tmp_path / "run", steps=2, log_every=1)
    with pytest.raises(
        memory.DeviceMemoryError,
        match=r"out of device memory at step 1 \(phase 1, its first step: "
        r"compile or run\): .*Out of memory allocating \d+ bytes.*; set "
        r"model.remat=full .*data.micro_batches.*lower data.batch_size",
    ) as err:
        train.run(config)
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "run" / "run.lock")  # released on the way out


def test_cli_out_of_memory_is_one_line_exit_2(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "make_train_step", _oom_step)
    rc = cli.main(
        [
            "--config",
            tl.CONFIG,
            "--set",
            f"store.url={store}",
            "--set",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: out of device memory at step 1")


def test_cli_out_of_memory_outside_a_step_is_one_line(monkeypatch, capsys):
    def exhausted(config):
        raise _real_exhaustion()

    monkeypatch.setattr(train, "run", exhausted)
    rc = cli.main(["--config", tl.CONFIG, "--set", "store.url=/nowhere", "--set", "run_dir=/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert (
        err[0].startswith("error: out of device memory: RESOURCE_EXHAUSTED") and "remat" in err[0]
    )


def test_address_space_warning_threshold():
    assert memory.address_space_warning(resource.RLIM_INFINITY) is None
    assert memory.address_space_warning(memory.MIN_ADDRESS_SPACE) is None
    line = memory.address_space_warning(2 * 2**30)
    assert (
        line.startswith("warning: the address-space limit (ulimit -v) is 2.0 GiB")
        and "ulimit -v unlimited" in line
    )


def test_low_ulimit_is_said_before_anything_else(store, tmp_path):
    # 3 GiB: enough to reach the config check (measured), below MIN_ADDRESS_SPACE. Set by the
    # shell (`ulimit -v`, KiB) as a user would; a preexec_fn would fork this JAX process.
    args = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        tl.CONFIG,
        "--set",
        f"store.url={store}",
        "--set",
        f"run_dir={tmp_path / 'run'}",
        "--set",
        "model.vocab_size=256",
    ]
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -v {3 * 2**20} && exec "$@"', "sh", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[0].startswith("warning: the address-space limit (ulimit -v) is 3.0 GiB")
    assert lines[-1].startswith("error: ") and "model.vocab_size=256" in lines[-1]
