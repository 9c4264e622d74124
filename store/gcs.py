"""``gs://`` URLs: the endpoint and credentials resolved as Google's client libraries do, before any request.

TensorStore's gcs driver, given no credentials, retries its credential and
metadata-server lookups and then the requests themselves for minutes (a bare
``gs://`` URL without network hung > 300 s). So the chain is walked here first,
in the order google-auth walks it, and a store URL fails with one line naming
what was tried:

* ``STORAGE_EMULATOR_HOST`` (what google-cloud-storage reads for an emulator,
  e.g. ``http://127.0.0.1:9023``): requests go there, unauthenticated, as the
  Google libraries send them to an emulator;
* ``GOOGLE_APPLICATION_CREDENTIALS``: a service-account or authorized-user
  JSON file, which must exist;
* the gcloud application-default file
  (``$CLOUDSDK_CONFIG/application_default_credentials.json``, else
  ``~/.config/gcloud/application_default_credentials.json``; written by
  ``gcloud auth application-default login``);
* the GCE metadata server, asked only on Google Compute Engine (the machine's
  DMI product name says "Google", or ``GCE_METADATA_HOST`` /
  ``GCE_METADATA_ROOT`` names a metadata server), with a 1 s timeout.

Endpoint: TensorStore's gcs driver has no endpoint field in its spec; it takes
the endpoint from ``TENSORSTORE_GCS_HTTP_URL``, read once per process at the
first ``gs://`` open. ``STORAGE_EMULATOR_HOST`` is copied into it (when it is
not set already), so users set the variable their other Google tools read.
Without an emulator, TensorStore's fixed-token hook is left alone.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from store import errors

GS_SCHEME = "gs://"
METADATA_TIMEOUT_S = 1.0
_DMI_PRODUCT = "/sys/class/dmi/id/product_name"
_METADATA_HOST = "metadata.google.internal"  # the GCE metadata server's name on GCE
# TensorStore's gcs endpoint and fixed-token variables (see the module docstring).
_TS_ENDPOINT = "TENSORSTORE_GCS_HTTP_URL"
_TS_TOKEN = "GOOGLE_AUTH_TOKEN_FOR_TESTING"


def emulator_endpoint() -> str | None:
    """The GCS emulator endpoint from ``STORAGE_EMULATOR_HOST`` (with a scheme), or None."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return None
    return host.rstrip("/") if "://" in host else f"http://{host.rstrip('/')}"


def endpoint() -> str:
    """The endpoint gs:// requests go to (for messages)."""
    return os.environ.get(_TS_ENDPOINT) or emulator_endpoint() or "https://storage.googleapis.com"


def adc_file() -> str:
    """Where gcloud writes application-default credentials."""
    config = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(
        os.path.expanduser("~"), ".config", "gcloud"
    )
    return os.path.join(config, "application_default_credentials.json")


def _metadata_root() -> str | None:
    """The metadata server's base URL when one is named or this is a GCE machine, else None."""
    host = os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT")
    if not host:
        try:
            with open(_DMI_PRODUCT) as f:
                on_gce = "Google" in f.read()
        except OSError:
            on_gce = False
        if not on_gce:
            return None
        host = _METADATA_HOST
    return host.rstrip("/") if "://" in host else f"http://{host.rstrip('/')}"


_metadata_seen: dict = {}  # root -> True once it answered: every array open resolves credentials again


def _metadata_answers(root: str) -> bool:
    """Whether the metadata server at ``root`` answers as one within METADATA_TIMEOUT_S (never via a proxy)."""
    if _metadata_seen.get(root):
        return True
    request = urllib.request.Request(
        f"{root}/computeMetadata/v1/instance/service-accounts/default/",
        headers={"Metadata-Flavor": "Google"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=METADATA_TIMEOUT_S) as response:
            _metadata_seen[root] = response.headers.get("Metadata-Flavor") == "Google"
            return _metadata_seen[root]
    except (urllib.error.URLError, OSError, ValueError):
        return False


def credentials(url: str) -> str:
    """Which credentials a gs:// store will use ("emulator", a file path, or "metadata server").

    Raises:
        StorageAccessError: none found; the message names each place tried.
    """
    emulator = emulator_endpoint()
    if emulator:
        os.environ.setdefault(_TS_ENDPOINT, emulator)
        os.environ.setdefault(
            _TS_TOKEN, "anonymous"
        )  # emulators take any token, as google-auth's anonymous one
        return "emulator"
    if os.environ.get(_TS_TOKEN):
        return _TS_TOKEN
    tried = []
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if explicit:
        if os.path.isfile(explicit):
            return explicit
        raise errors.StorageAccessError(
            f"no Google Cloud credentials for {url}: GOOGLE_APPLICATION_CREDENTIALS={explicit} does not exist; "
            f"point it at a service-account JSON key or unset it"
        )
    tried.append("GOOGLE_APPLICATION_CREDENTIALS (unset)")
    adc = adc_file()
    if os.path.isfile(adc):
        return adc
    tried.append(f"the gcloud application-default file {adc} (missing)")
    root = _metadata_root()
    if root is None:
        tried.append("the GCE metadata server (not on GCE)")
    elif _metadata_answers(root):
        return "metadata server"
    else:
        tried.append(f"the GCE metadata server {root} (no answer in {METADATA_TIMEOUT_S:g} s)")
    raise errors.StorageAccessError(
        f"no Google Cloud credentials found for {url}; tried {', '.join(tried)}; run "
        f"`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
        f"(STORAGE_EMULATOR_HOST for an emulator)"
    )


def kvstore_spec(url: str) -> dict:
    """The TensorStore kvstore spec of a normalized gs:// URL, after checking credentials exist."""
    bucket, _, path = url[len(GS_SCHEME) :].partition("/")
    if not bucket:
        raise errors.StoreNotFoundError(f"store URL {url!r} names no bucket; use gs://BUCKET/PATH")
    credentials(url)
    return {"driver": "gcs", "bucket": bucket, "path": path}
