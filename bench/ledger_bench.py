"""Ledger / start-up benchmark: opening a store vs its number of work units, with and without a ledger snapshot.

Per backend (local disk; the moto S3 server on loopback, requests counted by
a pass-through proxy) and number of units N, a synthetic store (T=1, k=0, no
activations, one row per unit: the ledger is all there is) gets N commit
records, then is measured before and after ``compact`` (the ledger snapshot):

* open_reader: ``StoreReader(url)`` (manifest, row count, committed units);
* open_writer: ``open_writer(url)``;
* list_committed: ``StoreWriter.committed_units()``;
* verify_planning: what ``verify`` does before it reads any unit: list the
  records and read every one (verify needs each record's sha256s, so this
  stays O(N) requests by design, issued concurrently);
* worker_startup: what a Grain worker does with the reader it is given:
  unpickle it and open its array handles;
* source_startup: what the trainer's Grain source does in each process:
  open a StoreReader and take its ``committed_rows()``.

Requests: local = TensorStore's file kvstore counters (reads + lists +
writes); S3 = HTTP requests through the proxy (a list of 1,000 keys is one
request). 1M units: a snapshot-only store (the snapshot lists 1M committed
units but the 1M record files are not written: with a sound snapshot on a
complete store no record is touched at open; verify_planning is not run).
Timings on a shared machine are inflated by the other jobs.

    python bench/ledger_bench.py [--local_sizes 1000 10000 100000] [--s3_sizes 1000 10000]
        [--million] [--dir /tmp/ledger_bench] [--out bench/results/ledger_bench.json]
"""

import argparse
import contextlib
import json
import os
import pickle
import shutil
import time

import numpy as np
import tensorstore as ts
from s3_loopback import (
    FaultProxy,
    make_bucket,
    moto_server,
    s3_env,
)  # bench/ (the script's directory)

from store import StoreReader, StoreSchema, create_store, layout, ledger, open_writer, snapshot

GOALS = {"requests_1M": 100, "seconds_1M_local": 5.0}
_FILE_OPS = ("read", "list", "write", "delete_range")


def _schema():
    return StoreSchema(
        seq_len=1,
        k=0,
        vocab_size=2,
        hidden_layers=(),
        hidden_dim=0,
        profile="exact",
        rows_per_unit=1,
        tokenizer={"sha256": "bench", "vocab_size": 2},
        teacher={},
        packing={"rule": "bench"},
    )


def _file_requests() -> int:
    names = {f"/tensorstore/kvstore/file/{op}" for op in _FILE_OPS}
    return sum(
        m["values"][0].get("value", 0)
        for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/")
        if m["name"] in names
    )


def _build(url: str, n: int, batch: int = 4000):
    """A store of n one-row units, each with a commit record (array data not written)."""
    w = create_store(url, _schema(), num_rows=n)
    kv = layout.open_kvstore(url)
    encoded = {"tokens": np.zeros((1, 1), np.int32)}
    sha = w.manifest["schema_sha256"]
    for a in range(0, n, batch):
        futures = [
            kv.write(
                ledger.record_key(u),
                ledger.encode_record(ledger.make_record(u, (u, u + 1), sha, encoded)),
            )
            for u in range(a, min(n, a + batch))
        ]
        for f in futures:
            f.result()


def _ops(url: str, with_verify: bool) -> dict:
    ops = {
        "open_reader": lambda: StoreReader(url),
        "open_writer": lambda: open_writer(url),
        "list_committed": lambda w=open_writer(url): w.committed_units(),  # noqa: B008 (one writer, opened once)
    }
    if with_verify:
        kv = layout.open_kvstore(url)
        ops["verify_planning"] = lambda: ledger.read_many(kv, sorted(ledger.committed_units(kv)))
    reader = pickle.dumps(StoreReader(url))
    ops["worker_startup"] = lambda: pickle.loads(reader)._handles()
    ops["source_startup"] = lambda: StoreReader(url).committed_rows()
    return ops


def _measure(url: str, count, n: int, with_verify: bool = True) -> dict:
    out = {}
    for name, fn in _ops(url, with_verify).items():
        before, t = count(), time.perf_counter()
        result = fn()
        out[name] = {"s": round(time.perf_counter() - t, 4), "requests": count() - before}
        if name == "open_reader":
            assert len(result.committed_units) == n, (len(result.committed_units), n)
            out[name]["ledger_source"] = result.ledger_source
    return out


def _run_size(backend: str, url: str, n: int, count, synthetic_snapshot: bool = False) -> dict:
    row = {"backend": backend, "units": n}
    t = time.perf_counter()
    if synthetic_snapshot:
        create_store(url, _schema(), num_rows=n)
        snapshot.write_runs(layout.open_kvstore(url), [[0, n]])
        row["note"] = "snapshot-only: record files not written"
    else:
        _build(url, n)
        row["no_snapshot"] = _measure(url, count, n)
        before, t0 = count(), time.perf_counter()
        open_writer(url).compact()
        row["compact"] = {"s": round(time.perf_counter() - t0, 4), "requests": count() - before}
    row["build_s"] = round(time.perf_counter() - t, 2)
    row["snapshot"] = _measure(url, count, n, with_verify=not synthetic_snapshot)
    return row


@contextlib.contextmanager
def _s3():
    """The moto server behind a counting proxy, AWS_ENDPOINT_URL pointing at the proxy."""
    with moto_server() as endpoint:
        make_bucket(endpoint, "bench")
        saved = dict(os.environ)
        try:
            with FaultProxy(endpoint) as proxy:
                os.environ.update(s3_env(proxy.endpoint))
                yield proxy
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _table(rows) -> str:
    ops = (
        "open_reader",
        "open_writer",
        "list_committed",
        "verify_planning",
        "worker_startup",
        "source_startup",
    )
    head = f"{'backend':7s} {'units':>8s} {'ledger':11s} " + " ".join(f"{o:>22s}" for o in ops)
    lines = [head, " " * 29 + " ".join(f"{'s / requests':>22s}" for _ in ops)]
    for r in rows:
        for mode in ("no_snapshot", "snapshot"):
            if mode not in r:
                continue
            cells = [
                f"{r[mode][o]['s']:>12.3f} / {r[mode][o]['requests']:>7d}"
                if o in r[mode]
                else f"{'-':>22s}"
                for o in ops
            ]
            lines.append(f"{r['backend']:7s} {r['units']:>8d} {mode:11s} " + " ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--local_sizes",
        type=int,
        nargs="*",
        default=[1000, 10000, 100000],
        help="units, local disk",
    )
    p.add_argument(
        "--s3_sizes", type=int, nargs="*", default=[1000, 10000], help="units, moto S3 on loopback"
    )
    p.add_argument(
        "--million",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the 1M-unit snapshot-only store (local and S3)",
    )
    p.add_argument(
        "--dir", default="/tmp/ledger_bench", help="scratch directory for the local stores"
    )
    p.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "ledger_bench.json"
        ),
        help="JSON report path",
    )
    args = p.parse_args(argv)
    shutil.rmtree(args.dir, ignore_errors=True)
    million = [1_000_000] if args.million else []
    rows = []
    for n in args.local_sizes + million:
        rows.append(
            _run_size(
                "local",
                os.path.join(args.dir, f"u{n}"),
                n,
                _file_requests,
                synthetic_snapshot=n in million,
            )
        )
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
    if args.s3_sizes or million:
        with _s3() as proxy:
            for n in args.s3_sizes + million:
                rows.append(
                    _run_size(
                        "s3",
                        f"s3://bench/u{n}",
                        n,
                        lambda: proxy.requests,
                        synthetic_snapshot=n in million,
                    )
                )
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    m = [r for r in rows if r["units"] == 1_000_000]
    goals = {
        f"{r['backend']}_1M_open_reader_le_{GOALS['requests_1M']}_requests": r["snapshot"][
            "open_reader"
        ]["requests"]
        <= GOALS["requests_1M"]
        for r in m
    }
    goals.update(
        {
            f"local_1M_open_reader_le_{GOALS['seconds_1M_local']}_s": r["snapshot"]["open_reader"][
                "s"
            ]
            <= GOALS["seconds_1M_local"]
            for r in m
            if r["backend"] == "local"
        }
    )
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
        "goals": goals,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(_table(rows))
    print("goals:", json.dumps(goals))
    shutil.rmtree(args.dir, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
