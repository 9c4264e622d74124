"""bench/device_check.sh end to end at tiny shapes on CPU, so it runs first time on a lent device."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, *args):
    out = tmp_path / "device_check.json"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.pop("XLA_FLAGS", None)  # One host device, as on a one-chip host.
    proc = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "bench", "device_check.sh"),
            "--tiny",
            "--out",
            str(out),
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_common(result, stdout):
    sec = result["sections"]
    assert not [n for n, v in sec.items() if "error" in v or "skipped" in v]
    for dtype in ("float32", "bfloat16"):
        t = sec["topk"][dtype]
        assert t["top_k_tokens_per_s"] > 0 and 0.0 <= t["approx_recall"] <= 1.0
    assert (
        sec["extract"]["extract_tokens_per_s"] > 0
        and sec["extract"]["bare_forward_tokens_per_s"] > 0
    )
    # The device encoders are byte-identical to the host's on CPU (tests/teacher_dump proves it
    # too); the script must say so, array by array.
    assert all(sec["encode"][p]["identical"] for p in ("exact", "compact", "lean"))
    assert "device_check on cpu" in stdout and "encode device vs host: exact identical" in stdout


def test_device_check_runs_end_to_end_at_tiny_shapes(tmp_path):
    result, stdout = _run(tmp_path, "--methods", "nll,kd")
    _check_common(result, stdout)
    train = result["sections"]["train"]
    assert set(train["methods"]) == {"nll", "kd"} and train["kd_over_nll_step_time"] > 0
    for row in train["methods"].values():
        assert row["synthetic_tokens_per_s"] > 0 and row["loader_tokens_per_s"] > 0
        assert row["mfu_vs_measured_matmul"] > 0


@pytest.mark.slow
def test_device_check_all_four_methods(tmp_path):
    result, stdout = _run(tmp_path)
    _check_common(result, stdout)
    assert set(result["sections"]["train"]["methods"]) == {"nll", "kd", "hldc", "hldf"}
