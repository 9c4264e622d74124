"""Store metadata derived from the manifest: the manifest is the source of truth.

Every metadata file of a store is a function of the manifest (schema +
profile + ``num_rows``):

* each array's ``zarr.json`` (dtype, shape in rows, shard and inner chunk
  grid, codecs, fill value, dimension names): ``layout.array_metadata`` as
  TensorStore serializes it (``array_bytes`` creates the array in a scratch
  ``memory://`` kvstore and takes the bytes TensorStore wrote, so a rewrite
  is byte-identical to the original);
* the intermediate groups' ``zarr.json`` (``topk``, ``hidden``, ``ledger``, ...).

The manifest itself lives in the root ``zarr.json`` and, checksummed, in
``ledger/manifest/zarr.json`` (the *copy*: ``{"format", "manifest",
"sha256"}``), so a damaged root can be restored byte for byte. When the two
disagree the copy wins (its sha256 proves it is what was written); a root
that fails its own checks (JSON, schema fingerprint) with a damaged copy is
the one case nothing here can repair.

The row count is ``manifest["num_rows"]``, never one array's shape. Stores
written before it existed have neither ``num_rows`` nor the copy (*legacy*):
their row count is the first dimension of ``tokens``, as it was.

``open_manifest`` decides which manifest is the truth and lists what is
wrong with the root and the copy; ``check_nodes`` compares every derived
file with what is stored. Readers and writers refuse a store with any
problem (one line naming ``python -m store repair``); ``verify`` reports
each problem naming its file; ``repair`` rewrites the files from the manifest.
"""

import dataclasses
import functools
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any, NoReturn

import tensorstore as ts

from store import errors, layout, profiles, remote
from store.schema import FORMAT_VERSION, STORE_FORMAT, StoreSchema, first_difference

ROOT_KEY = "zarr.json"
COPY_KEY = "ledger/manifest/zarr.json"
COPY_FORMAT = "distill-teacher-store/manifest-copy/1"
LEDGER_ATTRIBUTES = {
    "description": "commit records: the attributes of unit_NNNNNNNN/zarr.json, "
    "one per committed work unit"
}


def node_bytes(attributes: dict) -> bytes:
    """A group's zarr.json bytes, exactly as ``layout.write_group`` writes them."""
    return json.dumps(
        dict(layout.GROUP_NODE, attributes=attributes), sort_keys=True, indent=1
    ).encode()


def manifest_sha256(manifest: dict) -> str:
    """sha256 of the canonical JSON of a manifest."""
    return hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def copy_bytes(manifest: dict) -> bytes:
    """The bytes of ``ledger/manifest/zarr.json`` for ``manifest``."""
    return node_bytes(
        {"format": COPY_FORMAT, "manifest": manifest, "sha256": manifest_sha256(manifest)}
    )


@functools.lru_cache(maxsize=256)
def array_bytes(spec: layout.ArraySpec, num_rows: int, rows_per_unit: int) -> bytes:
    """The zarr.json bytes TensorStore writes for ``spec`` (created in a scratch in-memory kvstore)."""
    url = f"memory://derive-{uuid.uuid4().hex}/"
    context = ts.Context()  # Private: the scratch array is gone with it.
    ts.open(
        {
            "driver": "zarr3",
            "kvstore": url,
            "create": True,
            "metadata": layout.array_metadata(spec, num_rows, rows_per_unit),
        },
        context=context,
    ).result()
    return ts.KvStore.open(url, context=context).result().read("zarr.json").result().value


@dataclasses.dataclass
class Manifest:
    """The store's manifest as decided by ``open_manifest``.

    Attributes:
        manifest: the manifest (from the copy when the root disagrees with it).
        schema: its StoreSchema.
        legacy: a store written before ``num_rows`` and the copy existed.
        problems: [{"file", "problem"}] found in the root and the copy.
        root_raw, copy_raw: the stored bytes of the root zarr.json and of the copy (None: missing).
    """

    manifest: dict
    schema: StoreSchema
    legacy: bool
    problems: list
    root_raw: bytes | None
    copy_raw: bytes | None


def _read_raw(kv: ts.KvStore, key: str, url: str) -> bytes | None:
    """Bytes at ``key`` or None (missing; a directory there reads as missing)."""
    try:
        result = kv.read(key).result()
    except ValueError as e:
        raise remote.storage_error(e, url, f"reading {key} of") from None
    return None if result.state == "missing" else bytes(result.value)


def _parse_root(raw: bytes, url: str) -> tuple[dict, StoreSchema, None] | tuple[None, None, str]:
    """(manifest, schema, None) or (None, None, why the root is unusable). Raises for a newer format."""
    try:
        node = json.loads(raw)
    except ValueError:
        return None, None, "is not valid JSON (truncated or damaged)"
    if (
        not isinstance(node, dict)
        or node.get("zarr_format") != 3
        or node.get("node_type") != "group"
        or not isinstance(node.get("attributes"), dict)
    ):
        return None, None, "is not a Zarr v3 group node"
    manifest = node["attributes"]
    if manifest.get("store_format") != STORE_FORMAT:
        return None, None, f"has no '{STORE_FORMAT}' manifest"
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise errors.SchemaMismatchError(
            f"store {url} has format_version={version!r}, this package reads <= {FORMAT_VERSION}; "
            "upgrade the store package"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return None, None, f"has format_version={version!r}"
    try:
        schema = StoreSchema.from_dict(manifest["schema"])
    except (errors.StoreError, KeyError, TypeError, ValueError):
        return None, None, "has a schema that does not parse"
    if version != schema.format_version:  # e.g. a loss_mask store stamped 1 (store/rollout.py)
        return (
            None,
            None,
            f"has format_version={version!r}, its schema needs {schema.format_version}",
        )
    if manifest.get("schema_sha256") != schema.fingerprint():
        return None, None, "has a schema whose fingerprint differs from schema_sha256"
    rows = manifest.get("num_rows", 0)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return None, None, f"has num_rows={rows!r}"
    return manifest, schema, None


def _parse_copy(raw: bytes) -> tuple[dict, None] | tuple[None, str]:
    """The copy's manifest if it is sound, else (None, why)."""
    try:
        body = json.loads(raw)["attributes"]
        manifest = body["manifest"]
        ok = body.get("format") == COPY_FORMAT and body.get("sha256") == manifest_sha256(manifest)
    except (ValueError, KeyError, TypeError):
        return None, "is not valid JSON or not a manifest copy"
    return (manifest, None) if ok else (None, "fails its sha256")


def _essential(manifest: dict) -> dict:
    """The manifest without its informational ``created`` stamp.

    Two executions of the dump's PrepareStore may create one store at once and leave a root and a copy
    that differ only in it; readers need not care (``repair`` still makes the root the copy's bytes).
    """
    return {k: v for k, v in manifest.items() if k != "created"}


def open_manifest(kv: ts.KvStore, url: str) -> Manifest:
    """Reads the root zarr.json and its copy and decides which manifest is the truth.

    Raises:
        StoreNotFoundError: neither holds a store manifest (nothing there, or not a store).
        CorruptStoreError: both are damaged (nothing to repair from).
        SchemaMismatchError: a store of a newer format version.
    """
    root_raw, copy_raw = _read_raw(kv, ROOT_KEY, url), _read_raw(kv, COPY_KEY, url)
    root, root_schema, root_why = (
        (None, None, "is missing") if root_raw is None else _parse_root(root_raw, url)
    )
    copy, copy_why = (None, "is missing") if copy_raw is None else _parse_copy(copy_raw)
    fix = f"run `python -m store repair {url}`"
    if copy is not None:
        manifest, schema, why = _parse_root(node_bytes(copy), url)
        if why is not None:
            raise errors.CorruptStoreError(
                f"{url}{COPY_KEY} holds a manifest that {why}; restore the store "
                "from a backup or dump again to a new store URL"
            )
        assert manifest is not None and schema is not None  # why is None: both parsed
        problems = []
        if root is None:
            problems.append(
                {"file": ROOT_KEY, "problem": f"{root_why}; {fix} (it restores it from {COPY_KEY})"}
            )
        elif manifest_sha256(_essential(root)) != manifest_sha256(_essential(copy)):
            field = first_difference(root, copy) or "?"
            problems.append(
                {
                    "file": ROOT_KEY,
                    "problem": f"manifest field {field} differs from its checksummed "
                    f"copy {COPY_KEY}; {fix} (it restores it)",
                }
            )
        return Manifest(manifest, schema, False, problems, root_raw, copy_raw)
    if root is None or root_schema is None:  # _parse_root gives both or neither
        assert root_why is not None  # no root: _parse_root (or the read) said why
        if root_raw is None and copy_raw is None:
            remote.check_bucket(kv, url)
            raise errors.StoreNotFoundError(
                f"no store at {url} (no zarr.json; empty or not a Zarr group); "
                "check the path or create one with store.create_store"
            )
        if copy_raw is None and root_why.startswith(("is not a Zarr", "has no ")):
            raise errors.StoreNotFoundError(
                f"{url} is a Zarr group but not a teacher-signal store ({ROOT_KEY} "
                f"{root_why}); pass the store's root URL"
            )
        raise errors.CorruptStoreError(
            f"{url}{ROOT_KEY} {root_why} and its copy {COPY_KEY} {copy_why}: the manifest is lost; restore "
            f"{ROOT_KEY} from a backup or dump again to a new store URL"
        )
    legacy = "num_rows" not in root
    problems = (
        []
        if legacy
        else [{"file": COPY_KEY, "problem": f"{copy_why}; {fix} (it rewrites it from {ROOT_KEY})"}]
    )
    return Manifest(root, root_schema, legacy, problems, root_raw, copy_raw)


def num_rows(kv: ts.KvStore, opened: Manifest, url: str) -> int:
    """The store's row count: the manifest's, or for a legacy store the first dimension of ``tokens``."""
    if not opened.legacy:
        return int(opened.manifest["num_rows"])
    raw = _read_raw(kv, "tokens/zarr.json", url)
    try:
        rows = json.loads(raw)["shape"][0] if raw is not None else 0
    except (ValueError, KeyError, TypeError, IndexError):
        rows = None
    if not isinstance(rows, int) or rows < 0:
        raise errors.CorruptStoreError(
            f"{url}tokens/zarr.json is damaged and this store (written before its manifest held num_rows) "
            "has no other record of its row count; restore the file from a backup or dump again"
        )
    return rows


def expected_nodes(schema: StoreSchema, manifest: dict, rows: int) -> dict:
    """{key: bytes} of every metadata file derived from the manifest (arrays and groups)."""
    profile = profiles.for_store(schema, manifest)
    R = schema.rows_per_unit
    out = {spec.name + "/zarr.json": array_bytes(spec, rows, R) for spec in profile.arrays(schema)}
    groups: set[str] = set()
    for spec in profile.arrays(schema):
        parts = spec.name.split("/")[:-1]
        groups.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    out.update({g + "/zarr.json": node_bytes({}) for g in groups})
    out["ledger/zarr.json"] = node_bytes(LEDGER_ATTRIBUTES)
    return out


def check_nodes(
    kv: ts.KvStore, expected: dict, url: str, keys: Iterable[str] | None = None
) -> tuple[list, list]:
    """Compares stored metadata with the derived bytes (``keys``: a subset, None: all).

    Returns:
        (problems, non_canonical): problems [{"file", "problem"}] for a file that
        is missing, not JSON or means something else; non_canonical: keys whose
        bytes differ but whose JSON means the same (``repair`` rewrites them).
    """
    keys = sorted(expected if keys is None else keys)
    try:
        futures = {k: kv.read(k) for k in keys}
        stored = {k: f.result() for k, f in futures.items()}
    except ValueError as e:
        raise remote.storage_error(e, url, "reading the metadata of") from None
    problems, non_canonical = [], []
    for key in keys:
        result, want = stored[key], expected[key]
        if result.state == "missing":
            problems.append({"file": key, "problem": "is missing (or not a file)"})
            continue
        raw = bytes(result.value)
        if raw == want:
            continue
        try:
            got = json.loads(raw)
        except ValueError:
            problems.append({"file": key, "problem": "is not valid JSON (truncated or damaged)"})
            continue
        wanted = json.loads(want)
        if got == wanted:
            non_canonical.append(key)
            continue
        field = first_difference(got, wanted) if isinstance(got, dict) else None
        if not field:
            what = "is not the metadata the manifest gives"
        elif _lookup(wanted, field) is None:
            what = f"has a field {field} the manifest does not give"
        elif _lookup(got, field) is None:
            what = f"lacks {field} (the manifest gives {_lookup(wanted, field)!r})"
        else:
            what = f"has {field}={_lookup(got, field)!r}, the manifest gives {_lookup(wanted, field)!r}"
        problems.append({"file": key, "problem": what})
    return problems, non_canonical


def _lookup(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def refuse(url: str, problems: list) -> NoReturn:
    """Raises CorruptStoreError naming the first metadata problem and ``python -m store repair``."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise errors.CorruptStoreError(
        f"store {url} metadata: {first['file']} {first['problem'].split('; ')[0]}{more}; run "
        f"`python -m store repair {url}` (it rewrites the metadata from the manifest; no data is lost)"
    )


def check_exists(url: str) -> None:
    """Raises StoreNotFoundError for a local store URL whose directory does not exist."""
    path = layout.local_path(url)
    if path is not None and not os.path.isdir(path):
        raise errors.StoreNotFoundError(
            f"no store at {path} (directory does not exist); check the path "
            "or create one with store.create_store"
        )


def open_checked(url: str, nodes: str = "arrays") -> tuple[ts.KvStore, Manifest, int]:
    """Opens a store's manifest for reading or writing and refuses one whose metadata disagrees.

    Args:
        url: normalized store URL.
        nodes: "arrays" (check the arrays' zarr.json) or "none".

    Returns:
        (kvstore, Manifest, num_rows).

    Raises:
        StoreNotFoundError / CorruptStoreError / SchemaMismatchError: as ``open_manifest``;
        CorruptStoreError also for any metadata problem (naming ``python -m store repair``).
    """
    check_exists(url)
    kv = layout.open_kvstore(url)
    opened = open_manifest(kv, url)
    if opened.problems:
        refuse(url, opened.problems)
    rows = num_rows(kv, opened, url)
    if nodes == "arrays":
        expected = expected_nodes(opened.schema, opened.manifest, rows)
        problems, _ = check_nodes(
            kv, expected, url, [k for k in expected if _is_array_key(opened, k)]
        )
        if problems:
            refuse(url, problems)
    return kv, opened, rows


def _is_array_key(opened: Manifest, key: str) -> bool:
    names = {
        s.name for s in profiles.for_store(opened.schema, opened.manifest).arrays(opened.schema)
    }
    return key[: -len("/zarr.json")] in names
