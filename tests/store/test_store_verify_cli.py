"""verify finds bad units; the CLI prints JSON and exits with the documented codes."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorstore as ts

from store import layout, ledger
from store.cli import main
from store.verify import verify_store

REPO = pathlib.Path(__file__).parent.parent.parent


def _flip(path: pathlib.Path, offset: int):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_ok(filled_store):
    url, _, _ = filled_store("compact", num_rows=10)
    report = verify_store(url)
    assert report["ok"] and report["committed_units"] == 3 and report["bad_units"] == []


@pytest.mark.parametrize("array,offset", [("hidden/2", 5), ("topk/logprobs", 3), ("tokens", -3)])
def test_flipped_bytes_name_the_unit(filled_store, tmp_path, array, offset):
    url, _, _ = filled_store("exact", num_rows=10)
    shard = tmp_path / "s" / array / "c" / "1" / "0"
    shard = shard / "0" if shard.is_dir() else shard
    _flip(shard, offset)  # offset -3: inside the shard index (and its crc32c)
    report = verify_store(url)
    assert not report["ok"]
    assert [(b["unit"], b["rows"], b["status"]) for b in report["bad_units"]] == [
        (1, [4, 8], "corrupt")
    ]


def test_deleted_shard_is_corrupt_and_missing_unit_reported(filled_store, tmp_path):
    url, _, _ = filled_store("exact", num_rows=10, units=[0, 1])
    (tmp_path / "s" / "tokens" / "c" / "0" / "0").unlink()
    report = verify_store(url)
    assert [(b["unit"], b["status"]) for b in report["bad_units"]] == [
        (0, "corrupt"),
        (2, "missing"),
    ]


def _tamper(url, name, unit, rows, change):
    """Rewrites ``change(array)`` into the unit's rows of ``name`` and updates its record (checksums pass)."""
    arr = ts.open({"driver": "zarr3", "kvstore": layout.array_url(url, name)}).result()
    x = arr[rows[0] : rows[1]].read().result()
    change(x)
    arr[rows[0] : rows[1]].write(x).result()
    kv = layout.open_kvstore(url)
    record = ledger.read(kv, unit)
    record["arrays"][name]["sha256"] = ledger.array_digest(x)
    ledger.write(kv, record)


def test_invalid_values_with_valid_checksums(filled_store, tmp_path):
    """Unsorted log-probs whose checksums and record were updated still fail verify."""
    url, schema, data = filled_store("exact", num_rows=8)

    def unsort(lp):
        lp[0, 0, :] = lp[0, 0, ::-1].copy()

    _tamper(url, "topk/logprobs", 0, (0, 4), unsort)
    report = verify_store(url)
    assert [(b["unit"], b["status"]) for b in report["bad_units"]] == [(0, "invalid")]
    assert "not sorted descending" in report["bad_units"][0]["detail"]


def test_invalid_sampled_draws_with_valid_checksums(filled_store):
    """Counts no longer summing to S (checksums and record updated) fail verify as invalid."""
    url, schema, _ = filled_store("lean", num_rows=8, samples=6)

    def add_a_draw(counts):
        counts[1, 3, 0] += 1

    _tamper(url, "sampled/counts", 1, (4, 8), add_a_draw)
    report = verify_store(url)
    assert [(b["unit"], b["status"]) for b in report["bad_units"]] == [(1, "invalid")]
    assert "counts must sum to samples=6" in report["bad_units"][0]["detail"]


def test_cli_on_a_lean_sampled_store(filled_store, capsys):
    url, schema, _ = filled_store("lean", num_rows=6, K=0, samples=12)
    assert main(["inspect", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {a["name"]: a for a in info["arrays"]}
    assert {"sampled/ids", "sampled/counts", "sampled/logprobs", "hidden_aux/2/step"} <= set(names)
    assert names["hidden/2"]["dtype"] == "uint8" and names["hidden/2"]["shape"] == [6, 16, 11]
    assert all(a["bytes_per_token"] > 0 for a in info["arrays"])
    assert main(["inspect", url]) == 0 and "samples=12" in capsys.readouterr().out
    assert main(["stats", url, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    s = stats["sampled"]
    assert s["samples"] == 12 and 1 <= s["distinct_ids"]["min"] and s["distinct_ids"]["max"] <= 12
    assert 0 < s["mass_of_drawn_ids"]["mean"] <= 1.0001
    assert (
        stats["hidden"]["2"]["top_channels"][0]["channel"] == 1
    )  # the planted outlier channel survives
    assert main(["stats", url]) == 0 and "12 draws: distinct ids mean" in capsys.readouterr().out
    assert main(["verify", url]) == 0


def _cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "store", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_json_on_tiny_store(filled_store, tmp_path):
    url, schema, _ = filled_store("compact", num_rows=10)
    rc, out, err = _cli("inspect", url, "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["committed_units"] == 3 and info["num_rows"] == 10
    names = {a["name"]: a for a in info["arrays"]}
    assert names["hidden/2"]["dtype"] == "int8" and "zstd" in names["hidden/2"]["codecs"]
    assert info["bytes_per_token"] > 0 and info["manifest"]["schema"]["profile"] == "compact"
    rc, out, _ = _cli("verify", url, "--json")
    assert rc == 0 and json.loads(out)["ok"] is True
    rc, out, _ = _cli("stats", url, "--json")
    stats = json.loads(out)
    assert rc == 0 and stats["rows_sampled"] == 10
    assert 0 < stats["topk"]["coverage"]["mean"] <= 1.0001
    assert stats["hidden"]["2"]["top_channels"][0]["channel"] == 1  # the planted outlier channel
    _flip(tmp_path / "s" / "hidden" / "2" / "c" / "2" / "0" / "0", 7)
    rc, out, _ = _cli("verify", url)
    assert rc == 1 and "unit 2 rows 8..10: corrupt" in out


def test_cli_text_output(filled_store):
    url, _, _ = filled_store("exact", num_rows=4)
    assert main(["inspect", url]) == 0
    assert main(["stats", url, "--rows", "2"]) == 0
    assert main(["verify", url]) == 0


@pytest.mark.parametrize("setup", ["missing", "empty", "not_a_store"])
def test_cli_errors_exit_2_with_one_line(tmp_path, setup):
    target = tmp_path / "x"
    if setup != "missing":
        target.mkdir()
    if setup == "not_a_store":
        (target / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    rc, out, err = _cli("inspect", target)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
