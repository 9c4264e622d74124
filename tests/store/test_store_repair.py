"""repair un-commits bad units so the writer (and the dump, which skips committed units) re-writes them."""

import pathlib

import pytest

from store import open_writer
from store.cli import main
from store.verify import verify_store


def _shard_bytes(root: pathlib.Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "/c/" in str(p.relative_to(root)) + "/"
    }


@pytest.mark.parametrize(
    "with_snapshot,profile,array",
    [(False, "exact", "hidden/2"), (True, "exact", "hidden/2"), (False, "lean", "sampled/counts")],
)
def test_flip_verify_repair_rewrite(filled_store, tmp_path, capsys, with_snapshot, profile, array):
    url, _, data = filled_store(profile, num_rows=10, samples=4 if profile == "lean" else 0)
    if with_snapshot:
        open_writer(url).compact()
    root = tmp_path / "s"
    good = _shard_bytes(root)
    shard = root / array / "c" / "1" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    blob[7] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert "unit 1 rows 4..8: corrupt" in out and "fix: python -m store repair file://" in out
    assert "run python -m store verify" not in out
    assert main(["repair", url]) == 0
    out = capsys.readouterr().out
    assert "un-committed 1 bad units [1]" in out and "re-run the same dump command" in out
    assert ("ledger snapshot re-compacted" in out) == with_snapshot
    w = open_writer(url)
    assert w.committed_units() == {0, 2} and not shard.exists()
    report = verify_store(url)
    assert [(b["unit"], b["status"]) for b in report["bad_units"]] == [(1, "missing")]
    assert report["ledger_snapshot"] is None
    w.write_unit(1, **data[1])  # what the dump does for an uncommitted unit
    assert verify_store(url)["ok"]
    assert _shard_bytes(root) == good  # byte-identical to before the flip


def test_repair_of_a_sound_store_does_nothing(filled_store, capsys):
    url, _, _ = filled_store("exact", num_rows=10, units=[0, 2])
    assert main(["repair", url]) == 0
    out = capsys.readouterr().out
    assert "nothing to repair" in out and "1 units missing" in out
    assert open_writer(url).committed_units() == {0, 2}


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 32)" in out and "(default: 0)" in out and "repair" in out and "compact" in out
