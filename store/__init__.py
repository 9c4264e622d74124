"""Offline teacher-signal store: a Zarr v3 group of token rows, teacher top-k
log-probs and hidden activations, written in resumable work units.

Never imports JAX or Beam, so any tool can read a store cheaply.
"""
from store.errors import (CorruptStoreError, IncompleteStoreError, SchemaMismatchError,
                          StoreError, StoreInputError, StoreNotFoundError)
from store.reader import StoreReader
from store.schema import StoreSchema
from store.writer import StoreWriter, create_store, open_writer

__all__ = ["StoreSchema", "create_store", "open_writer", "StoreReader", "StoreWriter",
           "StoreError", "StoreNotFoundError", "SchemaMismatchError", "IncompleteStoreError",
           "CorruptStoreError", "StoreInputError"]
