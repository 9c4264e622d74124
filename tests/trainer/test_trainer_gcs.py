"""The trainer on a gs:// store (loopback GCS emulator, see tests/store/test_store_gcs.py), and its
one-line failure without credentials (was a hang > 300 s)."""

import os
import subprocess
import sys
import time

import trainer_testlib as tl
from gcs_loopback import apply_env, gcs_env  # bench/, via tests/conftest.py

from trainer.training import loop as train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_few_steps_from_a_gcs_store(gcs, tmp_path):
    url = tl.make_store("gs://bkt/trainer-store", num_rows=16)
    summary = train.run(tl.tiny_config("kd", url, tmp_path / "run", steps=2))
    assert summary["global_step"] == 2


def test_trainer_without_gcs_credentials_one_line(tmp_path):
    env = apply_env(gcs_env(None, str(tmp_path / "gcloud")))
    start = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            f"{tl.CONFIG}:kd",
            "--set",
            "store.url=gs://bkt/s",
            "--set",
            f"run_dir={tmp_path / 'run'}",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    lines = [l for l in p.stderr.splitlines() if l.startswith("error")]
    assert p.returncode != 0 and len(lines) == 1, p.stderr
    assert "no Google Cloud credentials found for gs://bkt/s/" in lines[0]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    assert took < 60, took  # imports only: the store is opened before anything compiles
