"""gs:// stores against a loopback GCS emulator (gcp-storage-emulator), started by the tests.

Like the s3:// tests: the endpoint comes from what users of Google's tools set
(STORAGE_EMULATOR_HOST), every test runs with HTTP(S)_PROXY at a dead loopback
port (only 127.0.0.1 exempt), and no host credentials are visible, so nothing
can leave the machine. Credential resolution (store/gcs.py) happens before any
request: without credentials a gs:// URL fails in about a second with one line.
"""

import http.server
import os
import subprocess
import sys
import threading
import time

import pytest
from gcs_loopback import apply_env, gcs_env  # bench/, via tests/conftest.py
from loopback import free_port
from store_testlib import check_round_trip

from store import cli, errors, gcs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gcs_write_read_inspect_verify_stats(gcs, make_schema, capsys):
    check_round_trip("gs://bkt/roundtrip", make_schema(), capsys)


def _cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_gcs_missing_store_and_missing_bucket_one_line(gcs, capsys):
    assert "no store at gs://bkt/nothing-here/" in _cli_error(
        ["inspect", "gs://bkt/nothing-here"], capsys
    )
    err = _cli_error(["inspect", "gs://no-such-bucket/s"], capsys)
    assert "bucket does not exist" in err and gcs in err


def _run_cli(env, *argv, timeout=60):
    """Runs ``python -m store ARGV`` in a fresh process (TensorStore reads the gcs endpoint once per process)."""
    start = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "store", *argv],
        env=apply_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p, time.monotonic() - start


def _our_lines(stderr: str) -> list:
    """stderr without TensorStore's glog lines (a letter, 4 digits, a time: "E1206 05:28:41...")."""
    return [
        l for l in stderr.splitlines() if l.strip() and not (l[:1] in "IWEF" and l[1:5].isdigit())
    ]


def test_gcs_no_credentials_fails_fast_naming_what_was_tried(tmp_path):
    env = gcs_env(None, str(tmp_path / "gcloud"))
    env["GCE_METADATA_HOST"] = (
        f"127.0.0.1:{free_port()}"  # "on GCE", but its metadata server is dead
    )
    p, took = _run_cli(env, "inspect", "gs://bkt/s")
    lines = _our_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "no Google Cloud credentials found for gs://bkt/s/" in lines[0]
    assert "GOOGLE_APPLICATION_CREDENTIALS (unset)" in lines[0]
    assert str(tmp_path / "gcloud" / "application_default_credentials.json") in lines[0]
    assert "metadata server http://127.0.0.1:" in lines[0] and "no answer in 1 s" in lines[0]
    assert took < 30, took  # was a hang (> 300 s); ~1 s of metadata probe + Python start


def test_gcs_credentials_chain(tmp_path, monkeypatch):
    for k, v in gcs_env(None, str(tmp_path / "gcloud")).items():
        monkeypatch.setenv(k, v) if v else monkeypatch.delenv(k, raising=False)
    product = tmp_path / "product_name"
    product.write_text("Standard PC (Q35 + ICH9, 2009)\n")
    monkeypatch.setattr(gcs, "_DMI_PRODUCT", str(product))
    with pytest.raises(
        errors.StorageAccessError, match=r"the GCE metadata server \(not on GCE\); run `gcloud"
    ):
        gcs.credentials("gs://b/p/")
    missing = tmp_path / "key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    with pytest.raises(
        errors.StorageAccessError, match=f"GOOGLE_APPLICATION_CREDENTIALS={missing} does not exist"
    ):
        gcs.credentials("gs://b/p/")
    missing.write_text("{}")
    assert gcs.credentials("gs://b/p/") == str(missing)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    adc = tmp_path / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir()
    adc.write_text("{}")
    assert gcs.credentials("gs://b/p/") == str(adc)
    adc.unlink()
    # On GCE (the DMI product name says Google): the metadata server is asked, briefly.
    product.write_text("Google Compute Engine\n")
    with _metadata_server() as host:
        monkeypatch.setattr(gcs, "_METADATA_HOST", host)
        assert gcs.credentials("gs://b/p/") == "metadata server"
        monkeypatch.setenv("GCE_METADATA_ROOT", "127.0.0.1:1")  # a named server wins, and is dead
        with pytest.raises(
            errors.StorageAccessError, match=r"metadata server http://127.0.0.1:1 \(no answer"
        ):
            gcs.credentials("gs://b/p/")


class _Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Metadata-Flavor") == "Google"
        self.send_response(200 if ok else 403)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _metadata_server:
    """A loopback stand-in for the GCE metadata server; yields "127.0.0.1:PORT"."""

    def __enter__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_gcs_emulator_host_and_unreachable_endpoint_one_line(gcs_server, tmp_path):
    env = gcs_env(
        gcs_server, str(tmp_path / "gcloud")
    )  # STORAGE_EMULATOR_HOST only, as users set it
    p, _ = _run_cli(env, "inspect", "gs://bkt/nothing")
    assert p.returncode == 2 and _our_lines(p.stderr) == [
        "error: no store at gs://bkt/nothing/ (no zarr.json; empty or not a Zarr group); check the path or "
        "create one with store.create_store"
    ], p.stderr
    env["STORAGE_EMULATOR_HOST"] = env["HTTP_PROXY"]  # nobody listens there
    p, took = _run_cli(env, "inspect", "gs://bkt/s")
    lines = _our_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "could not be reached" in lines[0] and env["HTTP_PROXY"] in lines[0]
    assert took < 30, took  # TensorStore's retries bounded by layout's gcs_request_retries
