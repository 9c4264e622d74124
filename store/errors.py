"""Errors raised by the store.

Every error is a ``ValueError`` subclass whose message is one line naming the
problem *and* the fix, so CLIs can print it as-is and exit non-zero.
"""


class StoreError(ValueError):
    """Base class of every store error."""


class StoreNotFoundError(StoreError):
    """The URL holds no store (missing path, empty directory, not a store)."""


class SchemaMismatchError(StoreError):
    """A schema, fingerprint or alignment field disagrees with the store."""


class IncompleteStoreError(StoreError):
    """Some work units are not committed (and ``allow_partial`` was not set)."""


class CorruptStoreError(StoreError):
    """Stored bytes fail their checksums or decode to invalid values."""


class StoreInputError(StoreError):
    """Arguments passed to the store API have the wrong shape, dtype or range."""


class StorageAccessError(StoreError, OSError):
    """The storage service failed or refused a request (unreachable endpoint, missing bucket, credentials).

    An outage, not bad input: also an ``OSError``, so a caller can retry it
    (``except OSError``) apart from the store's other, permanent errors; still
    a ``StoreError`` (and ValueError) for the CLIs' one-line exit 2.

    ``failure`` names the failure alone (e.g. "no space left on device") where
    it is known, for callers that phrase their own line; else None.
    """

    failure: str | None = None
