"""A writer SIGKILLed mid-unit leaves the unit uncommitted; resuming gives the same bytes."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from store import IncompleteStoreError, StoreReader, create_store
from store.verify import verify_store

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent.parent

# The child writes units 0..3 and is killed inside write_unit(2): after every
# array of unit 2 is on disk but before its commit record (patched to block).
CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from store_testlib import synth_unit
    import store.ledger, store.writer
    from store import StoreSchema, create_store

    url, kill_unit = sys.argv[1], int(sys.argv[2])
    real_write = store.ledger.write
    def blocking_write(kv, record):
        if record["unit"] == kill_unit:
            print("ARRAYS_WRITTEN", flush=True)
            time.sleep(600)
        real_write(kv, record)
    store.writer.ledger.write = blocking_write
    schema = StoreSchema.from_dict({schema!r})
    w = create_store(url, schema, num_rows=14)
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, **synth_unit(np.random.default_rng(u), b - a, schema))
""")


def _write_all(url, schema, units):
    from store_testlib import synth_unit

    w = create_store(url, schema, num_rows=14)
    for u in units:
        a, b = w.unit_rows(u)
        w.write_unit(u, **synth_unit(np.random.default_rng(u), b - a, schema))
    return w


def _files(root: pathlib.Path) -> dict:
    # The root zarr.json and its copy hold creation time/host; every other file must match exactly.
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and str(p.relative_to(root)) not in ("zarr.json", "ledger/manifest/zarr.json")
    }


@pytest.mark.parametrize("profile,samples", [("compact", 0), ("lean", 12)])
def test_sigkill_mid_unit_then_resume_is_byte_identical(tmp_path, make_schema, profile, samples):
    schema = make_schema(profile, samples=samples)
    killed = tmp_path / "killed"
    code = CHILD.replace("{schema!r}", repr(schema.to_dict()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(killed), "2"], stdout=subprocess.PIPE, env=env
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == b"ARRAYS_WRITTEN", line
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    # The killed unit is not visible: the reader refuses, verify says partial.
    try:
        StoreReader(killed)
        raise AssertionError("a partial store was accepted")
    except IncompleteStoreError:
        pass
    report = verify_store(killed)
    assert not report["ok"]
    assert [(b["unit"], b["status"]) for b in report["bad_units"]] == [
        (2, "partial"),
        (3, "missing"),
    ]
    assert StoreReader(killed, allow_partial=True).committed_units == {0, 1}

    # Resume: write what is not committed, as a pipeline would.
    w = create_store(killed, schema, num_rows=14)
    from store_testlib import synth_unit

    for u in sorted(set(range(w.num_units)) - w.committed_units()):
        a, b = w.unit_rows(u)
        w.write_unit(u, **synth_unit(np.random.default_rng(u), b - a, schema))
    assert verify_store(killed)["ok"]

    clean = tmp_path / "clean"
    _write_all(clean, schema, range(4))
    got, want = _files(killed), _files(clean)
    assert sorted(got) == sorted(want)
    differing = [k for k in want if got[k] != want[k]]
    assert not differing, differing


def test_concurrent_writers_of_distinct_units(tmp_path, make_schema):
    """Two processes write disjoint units of one store at once."""
    schema = make_schema("exact")
    url = tmp_path / "s"
    create_store(url, schema, num_rows=14)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from store_testlib import synth_unit
        from store import StoreSchema, open_writer
        schema = StoreSchema.from_dict({schema.to_dict()!r})
        w = open_writer(sys.argv[1])
        for u in map(int, sys.argv[2].split(",")):
            a, b = w.unit_rows(u)
            w.write_unit(u, **synth_unit(np.random.default_rng(u), b - a, schema))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(url), units], env=env)
        for units in ("0,2", "1,3")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert verify_store(url)["ok"]
    clean = tmp_path / "clean"
    _write_all(clean, schema, range(4))
    assert _files(url) == _files(clean)
