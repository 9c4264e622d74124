"""Shared test set-up.

Tests run on CPU. Multi-device tests simulate 8 devices; the flag must be set
before JAX initialises its backends, so it is set here for the whole session
(single-device tests just use device 0).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
