"""A loopback GCS server (gcp-storage-emulator) for the gs:// tests and benches.

Run as a script it is the emulator's own CLI (``python gcs_loopback.py start
--port P --in-memory``) with one fix: its media downloads lack the
``x-goog-generation`` header that GCS sends and TensorStore reads (without it
every conditional read fails "Malformed StorageGeneration"). The emulator does
not enforce ``ifGenerationMatch`` preconditions, so these tests do not cover
concurrent writers on gs:// (the s3:// tests do, against moto).

The tests import it by name: tests/conftest.py puts bench/ on the path.

``gcs_env`` is what a user of an emulator sets (``STORAGE_EMULATOR_HOST``, as
for Google's own client libraries) plus the loopback-only proxy guard: HTTP(S)_PROXY
at a dead loopback port with only 127.0.0.1/localhost exempt, so a request
meant for Google's servers fails fast instead of leaving the machine.
"""

import contextlib
import os
import subprocess
import sys

from loopback import (
    free_port,
    wait_for_port,
)  # bench/ (the script's directory, or via tests/conftest.py)

# Variables that choose gs:// credentials or the endpoint; cleared by gcs_env so the host's own
# (a developer's gcloud login) never leaks into a test.
GCS_VARIABLES = (
    "STORAGE_EMULATOR_HOST",
    "TENSORSTORE_GCS_HTTP_URL",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "GCE_METADATA_HOST",
    "GCE_METADATA_ROOT",
)


@contextlib.contextmanager
def gcs_emulator(bucket: str = "bkt"):
    """Runs an in-memory gcp-storage-emulator on 127.0.0.1 with a free port and ``bucket`` created;
    yields its endpoint URL; kills it in finally."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            bucket,
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "gcp-storage-emulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def gcs_env(endpoint: str | None, config_dir: str) -> dict:
    """The environment of a gs:// user of the emulator at ``endpoint`` (None: no emulator and no
    credentials), with ``config_dir`` as an empty gcloud config and the dead loopback proxy.

    Values of "" mean "unset" (callers delete those variables).
    """
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: "" for k in GCS_VARIABLES}
    env.update(
        {
            "CLOUDSDK_CONFIG": config_dir,
            "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead,
            "http_proxy": dead,
            "https_proxy": dead,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if endpoint:
        env["STORAGE_EMULATOR_HOST"] = endpoint
    return env


def apply_env(env: dict, base: dict | None = None) -> dict:
    """``base`` (default os.environ) updated with ``env``, "" values removed: a subprocess environment."""
    out = dict(os.environ if base is None else base)
    for k, v in env.items():
        if v:
            out[k] = v
        else:
            out.pop(k, None)
    return out


def _serve(argv):
    """The emulator's CLI with generation headers on downloads (see the module docstring)."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects  # before the server module binds its routes

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        except NotFound:
            pass  # the original answers 404
        return original(request, response, storage, *args, **kwargs)

    objects.download = download
    from gcp_storage_emulator.__main__ import main

    main(argv)


if __name__ == "__main__":
    _serve(sys.argv[1:])
