"""What the compiler says the train step needs: activations stay on their device's
rows under FSDP, micro-batches cut temporaries, and every shipped config fits the
topology its docstring states (TPU compiler through libtpu; skipped without it)."""

import importlib.util
import os

import jax
import pytest
import step_memory  # bench/ (on the path via tests/conftest.py)

from trainer.training import config as config_lib
from trainer.training import loop as train
from trainer.training import methods


def _tiny(method="kd", **sets):
    config = config_lib.load_config(f"tiny:{method}", [f"{k}={v}" for k, v in sets.items()])
    config.store.url, config.run_dir = "/unused", "/unused"
    return config


def _temp(config, devices):
    return step_memory.compile_step(config, devices)[2]["temp_gib"]


def test_fsdp_keeps_each_devices_activations_to_its_own_rows():
    """4 devices with FSDP and 4× the global batch need the temporaries of 1 device
    (before the fix, XLA gathered the whole batch onto every device: ~4×)."""
    one = _temp(
        _tiny(**{"data.batch_size": 16, "data.seq_len": 64, "mesh.data": 1}), jax.devices()[:1]
    )
    four = _temp(
        _tiny(**{"data.batch_size": 64, "data.seq_len": 64, "mesh.data": 1, "mesh.fsdp": 4}),
        jax.devices()[:4],
    )
    assert four < 1.5 * one, (four, one)


def test_micro_batches_cut_the_step_temporaries():
    sets = {"data.batch_size": 32, "data.seq_len": 64}
    full = _temp(_tiny(**sets), jax.devices()[:1])
    quarter = _temp(_tiny(**sets, **{"data.micro_batches": 4}), jax.devices()[:1])
    assert quarter < 0.5 * full, (quarter, full)


# --------------------------------------------------------------------------- TPU

_HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not _HAS_LIBTPU,
    reason="libtpu not installed (pip install libtpu==0.0.42.1 to compile for TPU topologies)",
)


def _stated_topology(name):
    spec = importlib.util.spec_from_file_location("_cfg", config_lib.config_file(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TOPOLOGY


def _fits(name, method):
    # A second libtpu user on the machine (another test process) holds its lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = _stated_topology(name)
    config = config_lib.load_config(f"{name}:{method}", ["store.url=/unused", "run_dir=/unused"])
    model_cfg = train.model_config_from(config)
    devices = step_memory.devices_for(topology)
    hbm = step_memory.HBM_GIB[topology.split(":")[0]]
    for phase in methods.phases(config, model_cfg.num_layers):
        row = step_memory.compile_step(config, devices, phase.index)[2]
        assert row["per_device_gib"] < hbm, f"{name}:{method} phase {phase.index}: {row}"


def test_every_shipped_config_states_a_known_topology():
    for name in config_lib.shipped_configs():
        assert _stated_topology(name).split(":")[0] in step_memory.HBM_GIB, name


@needs_libtpu
def test_tiny_config_fits_its_stated_tpu_topology():
    _fits("tiny", "kd")


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize(
    "name,method",
    [(n, m) for n in ("gemma3_270m", "gemma3_1b") for m in ("nll", "kd", "hldc", "hldf")]
    + [("demo", "kd"), ("teacher", None)],
)
def test_shipped_config_fits_its_stated_tpu_topology(name, method):
    _fits(name, method or "gemma3-4b")
