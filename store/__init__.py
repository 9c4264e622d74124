"""Offline teacher-signal store: a Zarr v3 group of token rows, teacher top-k
log-probs and hidden activations, written in resumable work units.

Never imports JAX or Beam, so any tool can read a store cheaply. Each codec's
jnp twins (the device encoder's and the train step's decoder's math) live
beside its numpy codec and are handed ``jax.numpy`` by their callers.

Modules: ``schema`` (StoreSchema, manifest in the root group attributes),
``profiles`` (exact / compact / lean encodings; ``lean`` holds the lean
activation code, ``bitpack`` the packed ids, ``sampled`` the sampled-logits
family, ``topn`` compact's outlier selection), ``layout`` (URLs, sharded crc32c
array specs), ``remote`` (s3:// endpoint/credentials the AWS SDK way, storage
errors as one line), ``gcs`` (gs:// credentials and emulator endpoint the
Google client libraries' way, checked before any request), ``ledger`` (per-unit commit records, tombstones),
``snapshot`` (the checked ledger snapshot), ``metadata`` (every zarr.json derived
from the manifest, checked and rewritten from it), ``writer``, ``reader`` (+
``localread``, the direct path for uncompressed local shards), ``verify``,
``repair``, ``stats``, ``inspection`` and ``cli`` (``python -m store
inspect|verify|stats|repair|compact STORE [--json]``). On disk::

    STORE/zarr.json                       group; attributes = manifest
    STORE/tokens/                         int32 [N, T]
    STORE/topk/{ids,logprobs,...}/        [N, T, K] (+ per-token side arrays)
    STORE/sampled/{ids,counts,logprobs}/  [N, T, S] teacher draws (schema.samples = S > 0)
    STORE/hidden/<l>/                     [N, T, D] encoded activations
    STORE/hidden_aux/<l>/{rms,...}/       per-token scales etc. of that encoding
    STORE/ledger/unit_NNNNNNNN/zarr.json  commit record of work unit N (the source of truth)
    STORE/ledger/uncommitted/unit_N_<uuid>/zarr.json  tombstone: unit N's record was deleted
    STORE/ledger/snapshot/zarr.json       committed units as runs (optional; see snapshot.py)
    STORE/ledger/manifest/zarr.json       checksummed copy of the manifest (see metadata.py)
    STORE/ledger/repairs/<time>_<id>/zarr.json  journal of one `repair` run (see repair.py)

Each array's shard (``c/<unit>/0...``) holds exactly one work unit's rows.
"""

from typing import TYPE_CHECKING, Any

from store.errors import (
    CorruptStoreError,
    IncompleteStoreError,
    SchemaMismatchError,
    StorageAccessError,
    StoreError,
    StoreInputError,
    StoreNotFoundError,
)

if TYPE_CHECKING:
    from store.reader import StoreReader
    from store.schema import StoreSchema
    from store.writer import StoreWriter, create_store, open_writer

# The reader and writer load TensorStore (about a second): they are imported on first
# use, so `python -m store --help` and tools needing only the errors answer at once.
_LAZY = {
    "StoreReader": "store.reader",
    "StoreSchema": "store.schema",
    "StoreWriter": "store.writer",
    "create_store": "store.writer",
    "open_writer": "store.writer",
}


def __getattr__(name: str) -> Any:
    """`store.StoreReader` etc., imported from their module on first access; `store.<module>`
    (e.g. `store.profiles` after a bare `import store`) imports that module, as the eager
    imports this replaces did for the modules they loaded."""
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name.startswith("__"):  # Probes such as __wrapped__ name no module.
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f"store.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"store.{name}":
                raise  # A module of ours failing to import is that error, not a missing name.
            raise AttributeError(f"module 'store' has no attribute {name!r}") from None
    globals()[name] = value
    return value


__all__ = [
    "StoreSchema",
    "create_store",
    "open_writer",
    "StoreReader",
    "StoreWriter",
    "StoreError",
    "StoreNotFoundError",
    "SchemaMismatchError",
    "IncompleteStoreError",
    "CorruptStoreError",
    "StoreInputError",
    "StorageAccessError",
]
