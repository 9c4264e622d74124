"""Damage around the bytes: metadata, ledger records, snapshots, directories where files belong.

Each case of the attack table (a committed store ``S``): ``verify`` names the
problem (never a traceback), ``repair`` fixes it without deleting any unit
whose bytes match its commit record, and the same writes restore the store
byte for byte. Reading never returns fill values for a committed unit.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from store import CorruptStoreError, StoreReader, metadata, open_writer
from store import reader as reader_mod
from store.cli import main
from store.repair import repair_store
from store.verify import verify_store


def _files(root: pathlib.Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and not str(p.relative_to(root)).startswith(("ledger/repairs", "ledger/uncommitted"))
    }


def _edit_json(path: pathlib.Path, change):
    node = json.loads(path.read_text())
    change(node)
    path.write_text(json.dumps(node))


def _flip(path: pathlib.Path, offset: int, mask=0x40):
    blob = bytearray(path.read_bytes())
    blob[offset] ^= mask
    path.write_bytes(bytes(blob))


def _rewrite_missing(url, data):
    """What the same dump command does: write every uncommitted unit, compact."""
    w = open_writer(url)
    for unit in range(w.num_units):
        if not w.is_committed(unit):
            w.write_unit(unit, **data[unit])
    w.compact()


@pytest.fixture
def store(filled_store, tmp_path):
    url, _, data = filled_store("exact", num_rows=10)  # units [0,4) [4,8) [8,10)
    open_writer(url).compact()
    root = tmp_path / "s"
    return url, root, data, _files(root)


CASES = {
    "tokens dtype": lambda r: _edit_json(
        r / "tokens/zarr.json", lambda j: j.__setitem__("data_type", "uint32")
    ),
    "rms dtype": lambda r: _edit_json(
        r / "hidden_aux/2/rms/zarr.json", lambda j: j.__setitem__("data_type", "int32")
    ),
    "tokens shape": lambda r: _edit_json(
        r / "tokens/zarr.json", lambda j: j["shape"].__setitem__(0, 8)
    ),
    "hidden metadata flip": lambda r: _flip(r / "hidden/2/zarr.json", 5),
    "root truncated": lambda r: (r / "zarr.json").write_bytes((r / "zarr.json").read_bytes()[:100]),
    "root flipped": lambda r: _flip(r / "zarr.json", 40),
    "root seq_len edited": lambda r: _edit_json(
        r / "zarr.json", lambda j: j["attributes"]["schema"].__setitem__("seq_len", 32)
    ),
    "root num_rows edited": lambda r: _edit_json(
        r / "zarr.json", lambda j: j["attributes"].__setitem__("num_rows", 8)
    ),
    "group deleted": lambda r: (r / "topk/zarr.json").unlink(),
}


@pytest.mark.parametrize("case", list(CASES))
def test_metadata_damage_is_rewritten_from_the_manifest_no_unit_lost(store, capsys, case):
    url, root, _, clean = store
    CASES[case](root)
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert (
        "units not checked" in out and "metadata: " in out and "fix: python -m store repair" in out
    )
    assert main(["repair", "--dry-run", url]) == 0
    assert "would: rewrite" in capsys.readouterr().out and _files(root) != clean  # nothing changed
    assert main(["repair", url]) == 0
    out = capsys.readouterr().out
    assert "no unit had to be un-committed" in out and "journal: ledger/repairs/" in out
    assert _files(root) == clean  # byte for byte, no re-write needed
    assert verify_store(url)["ok"]


def test_reader_and_writer_refuse_damaged_metadata_with_one_line(store):
    url, root, _, _ = store
    _edit_json(root / "tokens/zarr.json", lambda j: j["shape"].__setitem__(0, 8))
    for open_ in (StoreReader, open_writer):
        with pytest.raises(
            CorruptStoreError,
            match=r"tokens/zarr.json has shape=\[8, 16\], the manifest gives "
            r"\[10, 16\].*python -m store repair",
        ) as e:
            open_(url)
        assert "\n" not in str(e.value)


def test_row_count_comes_from_the_manifest_not_an_array(store):
    url, root, _, _ = store
    _edit_json(root / "tokens/zarr.json", lambda j: j["shape"].__setitem__(0, 8))
    report = verify_store(url)
    assert not report["ok"] and report["num_rows"] == 10 and report["num_units"] == 3
    assert [m["file"] for m in report["metadata"]] == ["tokens/zarr.json"]


def test_corrupt_record_is_never_committed_and_is_repaired(store, capsys):
    url, root, data, clean = store
    _flip(root / "ledger/unit_00000001/zarr.json", 3)
    assert not open_writer(url).is_committed(1)  # the dump's writer re-writes it, never skips it
    assert main(["verify", url]) == 1
    assert (
        "unit 1 rows 4..8: corrupt record: ledger/unit_00000001/zarr.json is not valid JSON"
        in capsys.readouterr().out
    )
    result = repair_store(url)
    assert [b["unit"] for b in result["repaired"]] == [1]
    _rewrite_missing(url, data)
    assert _files(root) == clean


def test_directory_where_a_shard_belongs(store, capsys):
    url, root, data, clean = store
    shard = root / "tokens/c/1/0"
    shard.unlink()
    shard.mkdir()
    assert main(["verify", url]) == 1
    assert "unit 1 rows 4..8: corrupt" in capsys.readouterr().out
    assert main(["repair", url]) == 0
    assert "did: remove the directory tokens/c/1/0" in capsys.readouterr().out
    _rewrite_missing(url, data)
    assert _files(root) == clean


def test_fifo_where_a_shard_belongs_does_not_block(store):
    url, root, _, _ = store
    shard = root / "tokens/c/1/0"
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(CorruptStoreError, match="array tokens of unit 1: .* special file"):
        StoreReader(url).read([5])
    assert [(b["unit"], b["status"]) for b in verify_store(url)["bad_units"]] == [(1, "corrupt")]


def test_corrupt_snapshot_is_named_and_recompacted(store, capsys):
    url, root, _, clean = store
    _flip(root / "ledger/snapshot/zarr.json", 30)
    assert main(["verify", url]) == 1
    assert "ledger snapshot ignored: snapshot fails its checksum" in capsys.readouterr().out
    assert main(["repair", url]) == 0
    assert "did: re-compact the ledger snapshot" in capsys.readouterr().out
    assert _files(root) == clean


def test_repair_stops_when_every_unit_fails_alike(store, capsys):
    """Damage shared by every unit (here: every rms shard, as a wrong dtype would look) deletes nothing."""
    url, root, _, _ = store
    for unit in range(3):
        _flip(root / f"hidden_aux/2/rms/c/{unit}/0", 2)
    before = _files(root)
    assert main(["repair", url]) == 1
    out = capsys.readouterr().out
    assert (
        "repair stopped: every committed unit (3) fails the same way (corrupt, array hidden_aux/2/rms"
        in out
    )
    assert "nothing was deleted" in out and _files(root) == before


@pytest.mark.parametrize("use_local", [True, False])
def test_missing_shard_is_an_error_naming_unit_and_array_never_zeros(store, monkeypatch, use_local):
    url, root, _, _ = store
    monkeypatch.setattr(reader_mod, "USE_LOCAL_READS", use_local)
    (root / "hidden/2/c/2/0/0").unlink()
    reader = StoreReader(url)
    reader.read(np.arange(0, 8))  # units 0 and 1 are intact
    for read in (lambda: reader.read([8, 9]), lambda: reader.read_stored([9], ["hidden/2"])):
        with pytest.raises(CorruptStoreError, match="array hidden/2 of unit 2.*missing"):
            read()


def test_repair_journal_records_every_action(store):
    url, root, _, _ = store
    _flip(root / "tokens/c/0/0", 9)
    result = repair_store(url)
    journal = json.loads((root / result["journal"]).read_text())["attributes"]
    assert journal["status"] == "done" and journal["actions"] == result["actions"]
    assert journal["actions"][0].startswith("un-commit unit 0 (rows 0..4, corrupt")


def test_root_and_copy_differing_only_in_creation_stamp_is_sound(store):
    """Two concurrent first creations (the dump's PrepareStore may run twice) can leave this behind."""
    url, root, _, clean = store
    _edit_json(
        root / "zarr.json", lambda j: j["attributes"]["created"].__setitem__("host", "other")
    )
    StoreReader(url)
    assert verify_store(url)["ok"]
    assert repair_store(url)["actions"] == [
        "rewrite zarr.json from the manifest (same manifest, other bytes)"
    ]
    assert _files(root) == clean


def test_manifest_lost_is_one_line(store, capsys):
    url, root, _, _ = store
    (root / "zarr.json").write_bytes(b"{")
    (root / "ledger/manifest/zarr.json").write_bytes(b"{")
    for command in ("verify", "repair", "inspect", "stats"):
        assert main([command, url]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the manifest is lost" in err, err


def test_dry_run_changes_nothing_and_writes_no_journal(store, capsys):
    url, root, _, _ = store
    _flip(root / "topk/logprobs/c/2/0/0", 3)
    before = _files(root)
    assert main(["repair", "--dry-run", url]) == 0
    out = capsys.readouterr().out
    assert (
        "nothing was changed; would un-commit 1 bad units [2]" in out and "would: re-compact" in out
    )
    assert _files(root) == before and not (root / "ledger/repairs").exists()
    assert main(["verify", "--dry-run", url]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: --dry-run is an option of repair, not of verify"
    )


def test_store_written_before_num_rows_and_the_copy_still_reads_verifies_and_resumes(store, capsys):
    """Such a store takes its row count from tokens' shape, as before; nothing is added to it."""
    url, root, data, _ = store
    manifest = json.loads((root / "zarr.json").read_text())["attributes"]
    manifest.pop("num_rows")
    (root / "zarr.json").write_bytes(metadata.node_bytes(manifest))  # as the writer wrote it then
    shutil.rmtree(root / "ledger/manifest")
    before = _files(root)
    assert StoreReader(url).num_rows == 10 and verify_store(url)["ok"]
    assert main(["repair", url]) == 0 and "nothing to repair" in capsys.readouterr().out
    open_writer(url).write_unit(1, **data[1])
    assert _files(root) == before
