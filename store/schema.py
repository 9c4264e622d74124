"""The store schema and the manifest kept in the Zarr group attributes.

A store is self-describing: the root group's ``zarr.json`` attributes hold
the *manifest*::

    {"store_format": "distill-teacher-store", "format_version": 1 or 2,
     "schema": {...StoreSchema fields...},
     "schema_sha256": "...",            # fingerprint of "schema", used by commit records
     "encodings": {...},                # per-array dtype and how to decode (see profiles.py)
     "split": "train" | "heldout",      # what the rows are for; absent in older stores ("unknown")
     "created": {"time": ..., "host": ..., "by": ...}}

``format_version`` is the oldest format that can read the store: 1, or 2
for a store with the rollout arrays (``loss_mask``, ``token_logprob``:
store/rollout.py), which a version-1 reader must refuse rather than read
without its mask. Everything under ``schema`` must match exactly when a writer reopens a store
(two dumps are never mixed); ``created`` is informational only. The row count
is the manifest's ``num_rows`` (outside ``schema``, so the fingerprint does not
change with it); every array's metadata is derived from the manifest (store/metadata.py).
"""

import dataclasses
import hashlib
import json
import numbers
import os
import socket
import time
from typing import Any, NoReturn

from store import errors

STORE_FORMAT = "distill-teacher-store"
# The newest format this package reads and writes; readers refuse newer ones. Bump when the
# on-disk layout changes incompatibly. A store records the oldest version that reads it
# (StoreSchema.format_version): 1 unless it has the rollout arrays (store/rollout.py, version 2).
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class StoreSchema:
    """Everything that defines a store's content and layout.

    Attributes:
        seq_len: tokens per row (T).
        k: stored top-k width (0: tokens-only store).
        vocab_size: tokenizer vocabulary size (V).
        hidden_layers: captured teacher layers (1-based block counts); () for none.
        hidden_dim: teacher width (D); 0 when no layers are captured.
        profile: precision profile name (see ``store.profiles``).
        rows_per_unit: work-unit size in rows (one shard per unit per array).
        tokenizer: {"sha256", "vocab_size", "bos_id", "eos_id", "pad_id"}.
        teacher: {"name", "fingerprint", "num_layers", "d_model", "config"} or {}.
        packing: how rows were packed, e.g. {"rule": "noam"}.
        samples: S teacher draws per position stored as ``sampled/*`` (0: none;
            see store/sampled.py). Omitted from ``to_dict`` when 0, so stores
            written before it existed keep their manifest and fingerprint.
        loss_mask: the store has ``loss_mask`` uint8 [N,T] (1 = completion
            token; store/rollout.py). Omitted from ``to_dict`` when False.
        token_logprob: the store has ``token_logprob`` float32 [N,T] (the
            teacher's log-prob of each realized next token; store/rollout.py).
            Omitted from ``to_dict`` when False.
    """

    seq_len: int
    k: int
    vocab_size: int
    hidden_layers: tuple = ()
    hidden_dim: int = 0
    profile: str = "exact"
    rows_per_unit: int = 64
    tokenizer: dict = dataclasses.field(default_factory=dict)
    teacher: dict = dataclasses.field(default_factory=dict)
    packing: dict = dataclasses.field(default_factory=dict)
    samples: int = 0
    loss_mask: bool = False
    token_logprob: bool = False

    def __post_init__(self) -> None:
        # Normalise so that a schema read back from JSON compares equal.
        object.__setattr__(self, "hidden_layers", tuple(int(l) for l in self.hidden_layers))
        if isinstance(self.samples, numbers.Integral) and not isinstance(self.samples, bool):
            object.__setattr__(self, "samples", int(self.samples))  # e.g. a numpy int: JSON-ready
        for name in ("tokenizer", "teacher", "packing"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise errors.StoreInputError(
                    f"StoreSchema.{name} must be a dict, got {type(value).__name__}; pass {{}} if unknown"
                )
            object.__setattr__(self, name, json.loads(json.dumps(value, sort_keys=True)))
        self.validate()

    def validate(self) -> None:
        """Raises StoreInputError when a field is out of range."""

        def bad(msg: str) -> NoReturn:
            raise errors.StoreInputError(f"invalid StoreSchema: {msg}")

        for name in ("seq_len", "vocab_size", "rows_per_unit"):
            if int(getattr(self, name)) <= 0:
                bad(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("loss_mask", "token_logprob"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name}={getattr(self, name)!r} must be True or False")
        if (
            not isinstance(self.samples, int)
            or isinstance(self.samples, bool)
            or not 0 <= self.samples <= 255
        ):
            bad(
                f"samples={self.samples!r} must be an integer in [0, 255] (sampled/counts are uint8; 0: no draws)"
            )
        if not 0 <= self.k <= self.vocab_size:
            bad(
                f"k={self.k} must be in [0, vocab_size={self.vocab_size}] (k=0 for a tokens-only store)"
            )
        if bool(self.hidden_layers) != (self.hidden_dim > 0):
            bad(
                f"hidden_layers={self.hidden_layers} and hidden_dim={self.hidden_dim} disagree; "
                "give both (layers and width) or neither ((), 0)"
            )
        if any(l < 1 for l in self.hidden_layers) or len(set(self.hidden_layers)) != len(
            self.hidden_layers
        ):
            bad(f"hidden_layers={self.hidden_layers} must be distinct 1-based block counts")
        from store import profiles  # Local import: profiles imports this module.

        profiles.get_profile(self.profile).check_schema(self)
        if self.hidden_dim > 65535:
            bad(
                f"hidden_dim={self.hidden_dim} must be <= 65535 (compact outlier channel ids are uint16)"
            )
        if self.tokenizer.get("vocab_size") not in (None, self.vocab_size):
            bad(
                f"tokenizer vocab_size={self.tokenizer['vocab_size']} != vocab_size={self.vocab_size}; "
                "pass the tokenizer's vocab size"
            )

    @property
    def format_version(self) -> int:
        """The oldest manifest format that reads this store: 2 with a rollout array, else 1."""
        # Local import: rollout (with layout) is not needed to parse a manifest.
        from store import rollout

        return rollout.VERSION if self.loss_mask or self.token_logprob else 1

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (``samples``, ``loss_mask``, ``token_logprob`` only when
        set: older manifests stay byte-identical)."""
        d = dataclasses.asdict(self)
        d["hidden_layers"] = list(self.hidden_layers)
        for name in ("samples", "loss_mask", "token_logprob"):
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StoreSchema":
        """Inverse of ``to_dict``; unknown keys are an error (a newer format)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise errors.SchemaMismatchError(
                f"store schema has unknown fields {sorted(unknown)}; upgrade this package to read it"
            )
        return cls(**d)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the schema (stamped into commit records)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def first_difference(stored: Any, wanted: Any, prefix: str = "") -> str | None:
    """Dotted name of the first field that differs between two JSON values, or None."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            diff = first_difference(stored.get(key), wanted.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if stored == wanted else prefix.rstrip(".")


def check_same_schema(stored: StoreSchema, wanted: StoreSchema, url: str) -> None:
    """Raises SchemaMismatchError naming the first differing field."""
    field = first_difference(stored.to_dict(), wanted.to_dict())
    if field is None:
        return
    get = lambda d: _lookup(d, field)
    raise errors.SchemaMismatchError(
        f"store {url} has {field}={get(stored.to_dict())!r} but the writer's schema has "
        f"{field}={get(wanted.to_dict())!r}; write to a new store URL (stores never mix two dumps)"
    )


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


# What a store's rows are for (manifest "split", informational like "created"): a
# training store, or a held-out evaluation set; stores written before it read as unknown.
SPLITS = ("train", "heldout")
UNKNOWN_SPLIT = "unknown"


def manifest_split(manifest: dict) -> str:
    """The manifest's split ("train", "heldout"), or "unknown" for stores that do not record one."""
    split = manifest.get("split")
    return split if split in SPLITS else UNKNOWN_SPLIT


def build_manifest(schema: StoreSchema, encodings: dict, split: str | None = None) -> dict:
    """The group-attribute manifest for a new store (``split``: one of SPLITS, or None: not recorded)."""
    if split is not None and split not in SPLITS:
        raise errors.StoreInputError(f"split={split!r} is not one of {SPLITS}")
    return {
        "store_format": STORE_FORMAT,
        "format_version": schema.format_version,
        "schema": schema.to_dict(),
        "schema_sha256": schema.fingerprint(),
        "encodings": encodings,
        **({"split": split} if split is not None else {}),
        "created": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            "by": "store (python)",
        },
    }


def schema_from_manifest(manifest: dict, url: str) -> StoreSchema:
    """Parses and checks a manifest read from a group's attributes."""
    if manifest.get("store_format") != STORE_FORMAT:
        raise errors.StoreNotFoundError(
            f"{url} is a Zarr group but not a teacher-signal store (no '{STORE_FORMAT}' manifest); "
            "pass the store's root URL"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise errors.SchemaMismatchError(
            f"store {url} has format_version={version!r}, this package reads <= {FORMAT_VERSION}; "
            "upgrade the store package"
        )
    schema = StoreSchema.from_dict(manifest["schema"])
    if version != schema.format_version:
        raise errors.SchemaMismatchError(
            f"store {url} has format_version={version} but its schema needs "
            f"{schema.format_version}; the manifest is damaged: run `python -m store repair {url}`"
        )
    return schema


def read_manifest(url: str) -> tuple[Any, dict, StoreSchema]:
    """Opens the store at ``url``: returns (kvstore, manifest, schema).

    Raises:
        StoreNotFoundError: nothing at ``url``, or a Zarr group that is not a store.
        SchemaMismatchError: a store written by a newer format version.
    """
    from store import layout, remote  # Local import: layout is only needed to open a store.

    url = layout.normalize_url(url)
    path = layout.local_path(url)
    if path is not None and not os.path.isdir(path):
        raise errors.StoreNotFoundError(
            f"no store at {path} (directory does not exist); check the path "
            "or create one with store.create_store"
        )
    kv = layout.open_kvstore(url)
    try:
        root = layout.read_json(kv, "zarr.json")
    except json.JSONDecodeError:
        raise errors.StoreNotFoundError(
            f"{url}zarr.json is not valid JSON; pass the root of a store written by store.create_store"
        ) from None
    if root is None:
        remote.check_bucket(kv, url)
        raise errors.StoreNotFoundError(
            f"no store at {url} (no zarr.json; empty or not a Zarr group); "
            "check the path or create one with store.create_store"
        )
    if root.get("zarr_format") != 3 or root.get("node_type") != "group":
        raise errors.StoreNotFoundError(f"{url} is not a Zarr v3 group; pass the root of a store")
    manifest = root.get("attributes", {})
    return kv, manifest, schema_from_manifest(manifest, url)
