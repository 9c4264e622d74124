"""The devices a plan compiles for: abstract TPU devices from libtpu, or host CPU devices.

TPU: `jax.experimental.topologies.get_topology_desc(platform="tpu", ...)`
describes a slice without one; compiling for its devices runs the real XLA
TPU compiler in libtpu. It needs libtpu importable (the `tpu` extra) and
works under JAX_PLATFORMS=cpu. Some generations expose one device per
TensorCore rather than per chip (v4: 8 devices on a 2x2x1 slice); the
planner then splits the chip's figures over its devices.

CPU (`--platform cpu`): the process's host devices, one per chip of the
topology (the CLI forces their count before JAX starts). The CPU compiler's
bytes are not the TPU's, but every other part of the plan is the same, so
the tool and its tests run without libtpu.
"""

from __future__ import annotations

import importlib.util
import os

from trainer.plan.chips import PlanInputError, Topology

PLATFORMS = ("tpu", "cpu")
LIBTPU_FIX = (
    "install the pinned libtpu with `pip install -e '.[tpu]'` (or plan with "
    "--platform cpu, whose bytes are the CPU compiler's)"
)


def libtpu_available() -> bool:
    """Whether libtpu (the TPU compiler) can be imported."""
    return importlib.util.find_spec("libtpu") is not None


def plan_devices(topology: Topology, platform: str = "tpu") -> list:
    """The devices to compile for.

    Args:
        topology: the parsed topology.
        platform: "tpu" (abstract devices, real TPU compiler) or "cpu".

    Raises:
        PlanInputError: unknown platform, libtpu absent, a grid libtpu refuses,
            or too few host devices; each names the fix.
    """
    import jax  # Imported late: the CLI sets the host device count before JAX starts.

    if platform not in PLATFORMS:
        raise PlanInputError(f"unknown platform {platform!r}: pass one of {list(PLATFORMS)}")
    if platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topology.num_chips:
            raise PlanInputError(
                f"--platform cpu needs {topology.num_chips} host devices for {topology.name} but "
                f"JAX has {len(devices)}: start with XLA_FLAGS="
                f"--xla_force_host_platform_device_count={topology.num_chips} (the CLI does this "
                f"when JAX is not yet imported)"
            )
        return devices[: topology.num_chips]
    if not libtpu_available():
        raise PlanInputError(f"libtpu is not installed: {LIBTPU_FIX}")
    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU;
    # the planner drives none (it only compiles), so planners and tests may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.name)
    except jax.errors.JaxRuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PlanInputError(
            f"libtpu refuses topology {topology.name!r} ({first}); pass a slice "
            f"shape Cloud TPU offers, e.g. v5e:2x2, v5e:4x4, v5p:2x2x1, "
            f"v6e:2x4"
        ) from None
    return list(desc.devices)
