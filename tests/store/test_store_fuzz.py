"""A seeded, bounded fuzz of store damage: verify never raises or lies, repair + the same writes restore it.

Every kind of file of a tiny store (the root manifest and its copy, each
group's and array's zarr.json, commit records, the ledger snapshot, shards
and their shard indices) is mutated one at a time: a flipped byte, a
truncation, a deletion, or a directory put in its place. For each mutation:

* ``verify_store`` returns a report (never raises), and never says OK while
  any stored row or the committed set differs from the clean store;
* ``repair_store`` never stops, and un-commits at most the one unit whose own
  file (a shard or its commit record) was damaged: a unit whose bytes match
  its record is never deleted;
* repair followed by the same writes the dump makes (write every uncommitted
  unit, compact the ledger) gives the clean store back byte for byte (every
  file but the repair journal and the tombstones, which are bookkeeping).
"""

import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from store_testlib import synth_unit

from store import StoreReader, StoreSchema, create_store
from store.repair import repair_store
from store.verify import verify_store

MUTATIONS = 200
SEED = 22
KINDS = ("flip", "flip", "truncate", "delete", "directory")
BOOKKEEPING = ("ledger/repairs/", "ledger/uncommitted/")
SCHEMA = StoreSchema(
    seq_len=4,
    k=2,
    vocab_size=50,
    hidden_layers=(1,),
    hidden_dim=8,
    rows_per_unit=2,
    tokenizer={"vocab_size": 50},
    teacher={},
    packing={},
)
NUM_ROWS = 5  # units [0,2) [2,4) [4,5)


def _dump(url, data):
    """What the dump does on (re-)run: create-or-reopen, write the uncommitted units, compact."""
    writer = create_store(url, SCHEMA, num_rows=NUM_ROWS)
    done = writer.committed_units()
    for unit in range(writer.num_units):
        if unit not in done:
            writer.write_unit(unit, **data[unit])
    writer.compact()


def _files(root: pathlib.Path) -> dict:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if not rel.startswith(BOOKKEEPING):
                out[rel] = pathlib.Path(dirpath, name).read_bytes()
    return out


def _rows(url):
    reader = StoreReader(url, allow_partial=True)
    rows = reader.committed_rows()
    return sorted(reader.committed_units), reader.read_stored(rows, reader.stored_names())


def _unit_of(rel: str):
    """The unit whose own file ``rel`` is (a shard or a commit record), else None."""
    found = re.match(r"ledger/unit_(\d+)/zarr\.json$", rel) or re.search(r"/c/(\d+)(/0)*$", rel)
    return int(found.group(1)) if found else None


CATEGORIES = (
    "root",
    "manifest copy",
    "snapshot",
    "record",
    "array metadata",
    "group metadata",
    "shard",
)


def _category(rel: str, unit, names) -> str:
    """Which kind of store file ``rel`` is (``names``: every file of the store)."""
    named = {
        "zarr.json": "root",
        "ledger/manifest/zarr.json": "manifest copy",
        "ledger/snapshot/zarr.json": "snapshot",
    }
    if rel in named:
        return named[rel]
    if unit is not None:
        return "record" if rel.startswith("ledger/") else "shard"
    parent = rel[: -len("zarr.json")]
    return "array metadata" if any(n.startswith(parent + "c/") for n in names) else "group metadata"


def _mutate(path: pathlib.Path, kind: str, rng, index_bytes: int):
    blob = path.read_bytes()
    if kind == "flip":
        # Shards: half of the flips land in the shard index (its last bytes).
        lo = max(0, len(blob) - index_bytes) if index_bytes and rng.random() < 0.5 else 0
        at = int(rng.integers(lo, len(blob)))
        path.write_bytes(blob[:at] + bytes([blob[at] ^ int(rng.integers(1, 256))]) + blob[at + 1 :])
    elif kind == "truncate":
        path.write_bytes(blob[: int(rng.integers(0, len(blob)))])
    elif kind == "delete":
        path.unlink()
    else:
        path.unlink()
        path.mkdir()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "clean"
    rng = np.random.default_rng(SEED)
    data = {u: synth_unit(rng, min(2, NUM_ROWS - 2 * u), SCHEMA) for u in range(3)}
    _dump(str(root), data)
    assert verify_store(str(root))["ok"]
    return root, data, _files(root), _rows(str(root))


def test_fuzz_verify_and_repair_never_lose_good_data(clean, tmp_path):
    root, data, clean_files, (clean_units, clean_arrays) = clean
    names = sorted(clean_files)
    rng = np.random.default_rng(SEED)
    by_category = {}
    for name in names:
        by_category.setdefault(_category(name, _unit_of(name), names), []).append(name)
    assert sorted(by_category) == sorted(CATEGORIES)
    # Every (kind of file, kind of damage) pair once, the rest drawn at random.
    plan = [
        (files[int(rng.integers(len(files)))], kind)
        for files in by_category.values()
        for kind in dict.fromkeys(KINDS)
    ]
    plan += [
        (names[int(rng.integers(len(names)))], KINDS[int(rng.integers(len(KINDS)))])
        for _ in range(MUTATIONS - len(plan))
    ]
    plan = [plan[j] for j in rng.permutation(len(plan))]
    kinds_seen = set()
    for i, (rel, kind) in enumerate(plan):
        unit = _unit_of(rel)
        work = tmp_path / "work"
        if i == 0:
            shutil.copytree(root, work)
        # Shard index: 16 bytes per inner chunk + crc32c; R=2 rows fit one inner chunk here.
        _mutate(
            work / rel, kind, rng, 20 if unit is not None and not rel.startswith("ledger/") else 0
        )
        kinds_seen.add((_category(rel, unit, names), kind))
        what = f"mutation {i}: {kind} {rel}"
        report = verify_store(str(work))  # must not raise
        if report["ok"]:
            units, arrays = _rows(str(work))
            assert units == clean_units, what
            for name, x in clean_arrays.items():
                assert arrays[name].tobytes() == x.tobytes(), (
                    f"{what}: verify said OK but {name} differs"
                )
        result = repair_store(str(work))
        assert result["status"] != "stopped", f"{what}: {result['why']}"
        repaired = {b["unit"] for b in result["repaired"]}
        assert repaired <= ({unit} if unit is not None else set()), (
            f"{what}: repair un-committed {sorted(repaired)}, whose own files were not touched"
        )
        _dump(str(work), data)
        assert _files(work) == clean_files, (
            f"{what}: not restored byte for byte; {result['actions']}"
        )
        # Restored: the next mutation starts from this store (minus the bookkeeping).
        for folder in BOOKKEEPING:
            shutil.rmtree(work / folder, ignore_errors=True)
    # Every kind of file met every kind of damage in this seeded run.
    assert kinds_seen >= {(c, k) for c in CATEGORIES for k in KINDS}, sorted(kinds_seen)
