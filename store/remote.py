"""Object-store URLs: ``s3://`` as a TensorStore kvstore spec, and remote failures as one line.

TensorStore's s3 driver ignores ``AWS_ENDPOINT_URL`` (a bare ``s3://`` URL
goes to the public AWS endpoint), so the spec is built here the way the AWS
SDKs resolve it:

* endpoint: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS itself;
* region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else TensorStore's lookup;
* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_SESSION_TOKEN``) when set, else the ``AWS_PROFILE`` (or "default")
  profile of the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE`` or
  ``~/.aws/credentials``) when it exists, else StorageAccessError before any
  request (as boto3's "Unable to locate credentials"). TensorStore's own
  default chain is not used: it also probes the EC2 metadata service, logs
  several lines per open when nothing is found, and then sends unsigned requests.

``gs://`` URLs are resolved in store/gcs.py (endpoint and credentials as
Google's client libraries resolve them, checked before any request).

Retries are TensorStore's (``s3_request_retries`` / ``gcs_request_retries`` in ``layout.context``):
failed requests (5xx, throttling, dropped connections) are retried with
exponential back-off; a unit whose writes still fail raises before its commit
record is written, so it stays uncommitted (the ledger's write-last rule).
"""

import errno
import os
import re
from typing import Any

import tensorstore as ts

from store import errors, gcs

S3_SCHEME = "s3://"


def s3_endpoint() -> str | None:
    """The endpoint the AWS SDKs would use for S3, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def kvstore_spec(url: str) -> str | dict[str, Any]:
    """The TensorStore kvstore spec of a normalized store URL (a dict for s3:// and gs://, else the URL)."""
    if url.startswith(gcs.GS_SCHEME):
        return gcs.kvstore_spec(url)
    if not url.startswith(S3_SCHEME):
        return url
    bucket, _, path = url[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise errors.StoreNotFoundError(f"store URL {url!r} names no bucket; use s3://BUCKET/PATH")
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path}
    endpoint = s3_endpoint()
    if endpoint:
        spec["endpoint"] = endpoint.rstrip("/")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    spec["aws_credentials"] = _credentials(url)
    return spec


def _credentials(url: str) -> dict:
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return {"type": "environment"}
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser(
        "~/.aws/credentials"
    )
    if os.path.isfile(shared):
        config = os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config")
        # TensorStore's profile provider fails ("STRING_MATCH_NOT_FOUND") without a
        # config file; an empty one stands in for a missing one, as for the SDKs.
        return {
            "type": "profile",
            "profile": os.environ.get("AWS_PROFILE", "default"),
            "credentials_file": shared,
            "config_file": config if os.path.isfile(config) else os.devnull,
        }
    raise errors.StorageAccessError(
        f"no AWS credentials found for {url}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        f"(or AWS_PROFILE with a {shared} file)"
    )


# TensorStore status text -> (what failed, the fix); first match wins.
_FAILURES = (
    ("NoSuchBucket", "the bucket does not exist", "create the bucket or fix the URL"),
    (
        "Failed to get credentials",
        "the AWS credentials could not be loaded",
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
    ),
    (
        "PERMISSION_DENIED",
        "the server refused the credentials",
        "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key with access to the bucket",
    ),
    (
        "UNAUTHENTICATED",
        "the server refused the credentials",
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    ),
    (
        "CURL error",
        "the storage endpoint could not be reached (after TensorStore's retries)",
        "check {endpoint_var} and that the server is up",
    ),
    (
        "retry attempts failed",
        "the storage service kept failing (after TensorStore's retries)",
        "check the server; re-running the same command resumes",
    ),
)


# The same for gs:// (Google's variables in the advice).
_GCS_FAILURES = (
    (
        "PERMISSION_DENIED",
        "the server refused the credentials",
        "use credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud application-default) with access to the bucket",
    ),
    (
        "UNAUTHENTICATED",
        "the server refused the credentials",
        "renew them: `gcloud auth application-default login` or a valid GOOGLE_APPLICATION_CREDENTIALS key",
    ),
    (
        "CURL error",
        "the storage endpoint could not be reached (after TensorStore's retries)",
        "check the network (or STORAGE_EMULATOR_HOST) and that the server is up",
    ),
    (
        "retry attempts failed",
        "the storage service kept failing (after TensorStore's retries)",
        "check the server; re-running the same command resumes",
    ),
)


def is_access_failure(e: ValueError) -> bool:
    """Whether a TensorStore error is the storage service failing (not the stored bytes)."""
    return any(needle in str(e) for needle, _, _ in _FAILURES + _GCS_FAILURES)


# A failed gs:// listing of an existing key range means the bucket is missing:
# GCS answers 404 (NOT_FOUND); an emulator's empty 404 body reads as a parse failure.
_GCS_NO_BUCKET = ("NOT_FOUND", "Failed to parse response metadata")


def check_bucket(kv: ts.KvStore, url: str) -> None:
    """Raises StorageAccessError if an object store's bucket is missing (one empty-range list request).

    A missing object and a missing bucket both read as "missing", so a store
    that is not found is told apart from a bucket that is not there.
    """
    if url.startswith((S3_SCHEME, gcs.GS_SCHEME)):
        try:
            kv.list(
                ts.KvStore.KeyRange(inclusive_min="zarr.json", exclusive_max="zarr.json\0")
            ).result()
        except ValueError as e:
            if url.startswith(gcs.GS_SCHEME) and any(n in str(e) for n in _GCS_NO_BUCKET):
                err = errors.StorageAccessError(
                    f"listing {url} (endpoint {gcs.endpoint()}) failed: the bucket "
                    f"does not exist; create the bucket or fix the URL"
                )
                err.failure = "the bucket does not exist"
                raise err from None
            raise storage_error(e, url, "listing") from None


def kv_url(kv: ts.KvStore) -> str:
    """A readable URL of an open kvstore (``kv.url`` is unsupported for s3 with an endpoint)."""
    spec = kv.spec().to_json()
    if spec["driver"] in ("s3", "gcs"):
        scheme = S3_SCHEME if spec["driver"] == "s3" else gcs.GS_SCHEME
        return f"{scheme}{spec['bucket']}/{spec.get('path', '')}"
    return kv.url


# Local-filesystem failures by errno (an OSError's, or the ``os_error_code`` that
# TensorStore puts into its status text) -> what the user reads.
LOCAL_FAILURES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_TS_ERRNO = re.compile(r"os_error_code='(\d+)'")


def local_failure(e: Exception) -> str | None:
    """What a local-filesystem error means ("no space left on device", ...), or None."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        found = _TS_ERRNO.search(str(e))
        code = int(found.group(1)) if found else None
    return LOCAL_FAILURES.get(code) if code is not None else None


def storage_error(e: ValueError, url: str, doing: str) -> errors.StoreError:
    """A one-line StoreError for a failed TensorStore call on the store at ``url`` (with ``failure`` set when known)."""
    if isinstance(e, errors.StoreError):
        return e
    text = str(e)
    is_s3, is_gs = url.startswith(S3_SCHEME), url.startswith(gcs.GS_SCHEME)
    where = (
        f"{url} (endpoint {s3_endpoint() or 'AWS default'})"
        if is_s3
        else f"{url} (endpoint {gcs.endpoint()})"
        if is_gs
        else url
    )
    is_file = url.startswith("file://")
    failures = () if is_file else _FAILURES  # credential/endpoint advice is for object stores
    local = local_failure(e) if is_file else None
    found: tuple[str, str] | None
    if local is not None:
        found = (local, "free space or fix the path's permissions, then re-run the same command")
    else:
        found = next(
            (
                (what, fix)
                for needle, what, fix in (_GCS_FAILURES if is_gs else failures)
                if needle in text
            ),
            None,
        )
        if found is not None:
            found = (found[0], found[1].format(endpoint_var="AWS_ENDPOINT_URL"))
    if found is None:
        return errors.StorageAccessError(f"{doing} {where} failed: {text.splitlines()[0][:200]}")
    err = errors.StorageAccessError(f"{doing} {where} failed: {found[0]}; {found[1]}")
    err.failure = found[0]
    return err
