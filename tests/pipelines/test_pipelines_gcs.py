"""The dump with a gs:// store and no Google Cloud credentials: one line, before any request (was a hang
> 300 s). The gs:// round trip itself is in tests/store/test_store_gcs.py (loopback emulator)."""

import time

import pipelines_testlib as lib
from gcs_loopback import gcs_env  # bench/, via tests/conftest.py
from loopback import free_port

from pipelines import dump


def test_dump_to_gcs_without_credentials_one_line(
    corpus, tokenizer_path, teacher_path, tmp_path, monkeypatch, capsys
):
    env = gcs_env(None, str(tmp_path / "gcloud"))
    env["GCE_METADATA_HOST"] = f"127.0.0.1:{free_port()}"  # "on GCE", its metadata server dead
    for k, v in env.items():
        monkeypatch.setenv(k, v) if v else monkeypatch.delenv(k, raising=False)
    directory, _ = corpus
    start = time.monotonic()
    rc = dump.main(
        lib.dump_argv(
            f"{directory}/*",
            "gs://bkt/store",
            teacher_path,
            tokenizer_path,
            "--heldout-fraction",
            "0.2",
            "--heldout-store",
            "gs://bkt/heldout",
        )
    )
    took = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert (
        "no Google Cloud credentials found for gs://bkt/" in err[0] and "metadata server" in err[0]
    )
    assert took < 30, took  # one 1 s metadata probe per store URL, no request
