"""Trainer loader read vs the raw read of the same files, and the device decode, per profile.

Geometry T=2048, k=128, D=2560, V=32,000 (``--vocab``) with bench/store_bench.py's
synthetic teacher signal and its cases (exact, compact, lean with top-k, and
lean_s12: lean with k=0 and 12 sampled draws, the <= 1 KB/token configuration).
Per case one store is written, then, in one run, interleaved (order rotated)
``--repeats`` times, over the arrays a KD+HLD batch needs (tokens, the top-k or
the sampled logits, one hidden layer RMS-normalised: no per-token RMS):
  * raw:    plain-Python sequential ``fh.read()`` of those arrays' files;
  * loader: ``trainer.training.data.StoreSource.read_indices`` batches of
            ``--read_batch`` rows: ``StoreReader.read_stored`` of the stored
            codes and side arrays, no host decode (what the trainer now feeds),
            chunks read by ``store.localread`` (pread + numcodecs zstd);
  * loader_ts: the same reads forced through TensorStore (its reader opened
            with ``store.reader.USE_LOCAL_READS = False``), i.e. the loader
            before store.localread read zstd chunks, side by side;
  * host:   the former loader, ``StoreReader.read(hidden_normalized=True, ...)``
            with the numpy decode on the host (float16 values for exact, float32
            for compact), for comparison.
Ratio of a mode = median over repeats of (same bytes / mode time) / (raw MB/s
of that repeat) — paired, robust to the other jobs on a shared machine.
Separately: the jitted ``decode.decode_batch`` of one loader batch already on
the device (tokens/s, best of ``--decode_repeats``), i.e. the work moved from
the host into the step. JSON to bench/results/loader_bench.json.

    python bench/loader_bench.py [--rows 12] [--read_batch 4] [--repeats 7] [--profiles exact,compact]
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import store_bench  # noqa: E402  (its synthetic teacher signal, raw read and timed pass)

from store import StoreReader, StoreSchema, create_store  # noqa: E402
from store import reader as store_reader
from trainer.training import data, decode  # noqa: E402

T, D, LAYER = store_bench.T, store_bench.D, store_bench.LAYER
HOST_VALUES = {"exact": np.float16, "compact": np.float32, "lean": np.float32}


def fields_of(k, samples):
    """Store fields of a KD+HLD batch: tokens, the logit signal the store has, one hidden layer."""
    return (
        ("tokens",)
        + (("topk",) if k else ())
        + (("sampled",) if samples else ())
        + (f"hidden/{LAYER}",)
    )


def write_store(url, profile, k, samples, V, signal, rows_per_unit):
    """The synthetic signal written as a `profile` store at `url` (k top-k slots, `samples` draws)."""
    shutil.rmtree(url, ignore_errors=True)
    schema = StoreSchema(
        seq_len=T,
        k=k,
        vocab_size=V,
        samples=samples,
        hidden_layers=(LAYER,),
        hidden_dim=D,
        profile=profile,
        rows_per_unit=rows_per_unit,
        tokenizer={"sha256": "bench", "vocab_size": V},
        teacher={"name": "synthetic", "fingerprint": "bench"},
        packing={"rule": "noam"},
    )
    w = create_store(url, schema, num_rows=signal["tokens"].shape[0])
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        kw = dict(topk_ids=signal["ids"][a:b], topk_logprobs=signal["lp"][a:b]) if k else {}
        if samples:
            kw.update(
                {n: signal[n][a:b] for n in ("sampled_ids", "sampled_counts", "sampled_logprobs")}
            )
        w.write_unit(u, tokens=signal["tokens"][a:b], hidden={LAYER: signal["hidden"][a:b]}, **kw)


def bench_profile(url, name, profile, fields, rows, read_batch, repeats, decode_repeats):
    source = data.StoreSource(url, fields)
    names = source.stored_names()
    reader = StoreReader(url)
    values = HOST_VALUES[profile]
    host_kw = dict(
        hidden_normalized=True,
        hidden_dtype=values,
        logprobs_dtype=values,
        ids_dtype=reader.stored_ids_dtype,
    )
    source.read_indices([0])  # opens the handles (once per process), untimed
    ts_source = data.StoreSource(url, fields)
    store_reader.USE_LOCAL_READS = False  # only while ts_source opens its handles
    try:
        ts_source.read_indices([0])
    finally:
        store_reader.USE_LOCAL_READS = True
    reader.read([0], fields=fields, **host_kw)
    passes = {
        "raw": lambda: sum(store_bench.raw_read(os.path.join(url, n))[1] for n in names),
        "loader": lambda: store_bench._timed_pass(source.read_indices, rows, read_batch),
        "loader_ts": lambda: store_bench._timed_pass(ts_source.read_indices, rows, read_batch),
        "host": lambda: store_bench._timed_pass(
            lambda r: reader.read(r, fields=fields, **host_kw), rows, read_batch
        ),
    }
    nbytes = sum(store_bench.raw_read(os.path.join(url, n))[0] for n in names)
    order = list(passes)
    times = {m: [] for m in order}
    for i in range(repeats):
        for m in order[i % len(order) :] + order[: i % len(order)]:
            times[m].append(passes[m]())
    tokens = rows * T
    res = {
        "case": name,
        "profile": profile,
        "fields": list(fields),
        "rows": rows,
        "tokens": tokens,
        "read_batch_rows": read_batch,
        "arrays": names,
        "bytes": nbytes,
        "bytes_per_token": nbytes / tokens,
    }
    for m in order:
        best = min(times[m])
        res[f"{m}_s_each_repeat"] = times[m]
        res[f"{m}_MB_s"] = nbytes / 1e6 / best
        res[f"{m}_tokens_s"] = tokens / best
        if m != "raw":
            res[f"{m}_vs_raw"] = float(np.median([r / t for t, r in zip(times[m], times["raw"])]))
    # The decode the loader no longer does: jitted, on one batch already on the device.
    spec = source.spec  # BatchSpec: the store's encoding and the fields read
    batch = jax.device_put(source.read_indices(np.arange(min(rows, read_batch))))
    fn = jax.jit(lambda b: decode.decode_batch(b, spec))
    jax.block_until_ready(fn(batch))
    best = float("inf")
    for _ in range(decode_repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(batch))
        best = min(best, time.perf_counter() - t)
    res["device_decode_s"] = best
    res["device_decode_tokens_s"] = min(rows, read_batch) * T / best
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=12, help="rows of T=2048 tokens")
    p.add_argument("--rows_per_unit", type=int, default=4)
    p.add_argument("--read_batch", type=int, default=4, help="rows per loader batch")
    p.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats per mode")
    p.add_argument("--decode_repeats", type=int, default=5, help="timed device decodes (best kept)")
    p.add_argument(
        "--cases",
        default=",".join(c[0] for c in store_bench.CASES),
        help="store_bench cases (name: profile, k, samples)",
    )
    p.add_argument("--vocab", type=int, default=store_bench.VOCABS[0])
    p.add_argument("--dir", default="/tmp/loader_bench")
    p.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "loader_bench.json"
        ),
    )
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    V = args.vocab
    cases = {c[0]: c[1:] for c in store_bench.CASES}
    unknown = [c for c in args.cases.split(",") if c not in cases]
    if unknown:
        p.error(f"unknown --cases {unknown}; use some of {list(cases)}")
    signal = store_bench.synth_logits(rng, args.rows, V, store_bench.SAMPLES)
    signal["tokens"] = rng.integers(0, V, (args.rows, T), dtype=np.int32)
    signal["hidden"] = store_bench.synth_hidden(rng, args.rows)
    results = []
    for name in args.cases.split(","):
        profile, k, samples = cases[name]
        url = os.path.join(args.dir, name)
        write_store(url, profile, k, samples, V, signal, args.rows_per_unit)
        results.append(
            bench_profile(
                url,
                name,
                profile,
                fields_of(k, samples),
                args.rows,
                args.read_batch,
                args.repeats,
                args.decode_repeats,
            )
        )
        shutil.rmtree(url, ignore_errors=True)
    goals = {f"{r['case']}_loader_ge_0.7x_raw": r["loader_vs_raw"] >= 0.7 for r in results}
    dev = jax.devices()[0]
    report = {
        "bench": "loader_bench",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "geometry": {
            "T": T,
            "k": store_bench.K,
            "samples": store_bench.SAMPLES,
            "D": D,
            "V": V,
            "layer": LAYER,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_at_end": os.getloadavg()[0],
            "device": f"{dev.platform}:{dev.device_kind}",
        },
        "profiles": results,
        "goals": goals,
        "note": (
            "page-cache reads of the arrays a KD+HLD batch needs; raw = plain-Python fh.read() of "
            "their files; loader = StoreSource.read_indices (read_stored, no host decode); loader_ts = the same "
            "through TensorStore (store.reader.USE_LOCAL_READS off); host = "
            "the former loader (StoreReader.read with the numpy decode); X_vs_raw = median over "
            "interleaved repeats of raw time / X time (same bytes); device decode = jitted "
            "decode.decode_batch of one batch already on the device"
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    print(
        f"{'case':9s} {'B/token':>8s} {'raw MB/s':>9s} {'loader MB/s':>11s} {'loader tok/s':>12s} "
        f"{'loader/raw':>10s} {'ts/raw':>6s} {'host tok/s':>11s} {'host/raw':>8s} {'decode tok/s':>12s}"
    )
    for r in results:
        print(
            f"{r['case']:9s} {r['bytes_per_token']:8.1f} {r['raw_MB_s']:9.1f} {r['loader_MB_s']:11.1f} "
            f"{r['loader_tokens_s']:12.0f} {r['loader_vs_raw']:10.2f} {r['loader_ts_vs_raw']:6.2f} "
            f"{r['host_tokens_s']:11.0f} {r['host_vs_raw']:8.2f} {r['device_decode_tokens_s']:12.0f}"
        )
    print(
        f"X/raw = median over {args.repeats} interleaved repeats of raw time / X time over the same bytes "
        f"(tokens + top-k or sampled + hidden/{LAYER}, no RMS); ts = the loader's reads through "
        "TensorStore; host = former loader (numpy decode); decode = jitted "
        f"device decode on {dev.platform}.  goals: {goals}"
    )
    return report


if __name__ == "__main__":
    main()
