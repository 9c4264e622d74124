"""Store benchmark: bytes/token, fidelity, write/read throughput per profile.

Geometry T=2048, k=128, D=2560 (a Gemma 3 4B-shaped teacher), V=32,000.
Synthetic but shaped like the real thing:
  * log-probs: a real log-softmax over V of Zipf-prior logits (SentencePiece
    ids are roughly frequency-ordered) plus per-token noise and a few
    context-boosted ids; top-128 taken from it (sorted, like lax.top_k);
  * activations: Student-t (df=4) channels with log-normal per-channel scales,
    a per-token scale, and 6 massive outlier channels ~50x the rest, mean
    squared magnitude ~2e5 (the teacher's median layer is ~3e5).

Throughput is measured on the page cache: the files were just written, the
raw sequential read (plain Python ``fh.read()`` of every file of the store)
is measured right before and right after the store read, in the same state,
and the better of the two is the baseline (the stricter comparison); a
``readinto``-one-reused-buffer read (no allocation at all) is reported too.
Read MB/s counts stored bytes; the store read also decodes (hidden to
float32, i.e. twice the stored bytes out). Nothing drops the page cache.

    python bench/store_bench.py [--rows 12] [--rows_per_unit 4] [--dir /tmp/store_bench]
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store import StoreReader, StoreSchema, create_store  # noqa: E402
from store.inspection import inspect_store  # noqa: E402

T, K, D, V, LAYER = 2048, 128, 2560, 32000, 17


def synth_topk(rng, rows):
    """Top-K of a real log-softmax over V, per token. Returns (ids int32, logprobs float32)."""
    prior = (-1.1 * np.log1p(np.arange(V, dtype=np.float32))).astype(np.float32)
    ids_out = np.empty((rows, T, K), np.int32)
    lp_out = np.empty((rows, T, K), np.float32)
    for r in range(rows):
        for a in range(0, T, 512):
            logits = prior + rng.standard_normal((512, V), dtype=np.float32) * np.float32(1.5)
            boost = rng.integers(0, V, (512, 8))
            np.put_along_axis(logits, boost, np.take_along_axis(logits, boost, -1)
                              + rng.uniform(2, 12, (512, 8)).astype(np.float32), -1)
            m = logits.max(-1, keepdims=True)
            lse = m + np.log(np.exp(logits - m).sum(-1, keepdims=True))
            top = np.argpartition(-logits, K, axis=-1)[:, :K]
            vals = np.take_along_axis(logits, top, -1)
            order = np.argsort(-vals, axis=-1, kind="stable")
            ids_out[r, a:a + 512] = np.take_along_axis(top, order, -1)
            lp_out[r, a:a + 512] = np.take_along_axis(vals, order, -1) - lse
    return ids_out, lp_out


def synth_hidden(rng, rows):
    chan_scale = np.exp(rng.normal(0, 0.5, D)).astype(np.float32) * 150
    outliers = rng.choice(D, 6, replace=False)
    out = np.empty((rows, T, D), np.float32)
    for r in range(rows):
        h = rng.standard_t(4, (T, D)).astype(np.float32) * chan_scale
        h *= np.exp(rng.normal(0, 0.3, (T, 1))).astype(np.float32)
        h[:, outliers] = (rng.normal(8000, 1500, (T, 6)) * np.sign(np.arange(6) - 2.5)).astype(np.float32)
        out[r] = h
    return out


def raw_read(root, reuse_buffer=False):
    """Plain-Python sequential read of every file under ``root``: (bytes, seconds).

    Default: ``fh.read()`` per file (a fresh buffer per file, as any reader
    that returns the data must allocate). ``reuse_buffer``: ``readinto`` one
    64 MB buffer (no allocation, no page faults: an upper bound).
    """
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    buf = bytearray(64 << 20) if reuse_buffer else None
    t = time.perf_counter()
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            if reuse_buffer:
                while n := fh.readinto(buf):
                    total += n
            else:
                total += len(fh.read())
    return total, time.perf_counter() - t


def cos_p1(a, b):
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.percentile(cos, 1)), float(cos.min())


def rel_mse(a, ref):
    return float(((a - ref) ** 2).sum() / (ref ** 2).sum())


def topk_kl(lp_ref, lp):
    """Mean per-token KL(p_ref || p) over the stored support (softmax of log-probs), nats."""
    def norm(x):
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    a, b = norm(lp_ref), norm(lp)
    p = np.exp(a)
    return float((p * (a - b)).sum(-1).mean())


def run_profile(profile, data, root, rows_per_unit, read_batch):
    rows = data["tokens"].shape[0]
    url = os.path.join(root, profile)
    shutil.rmtree(url, ignore_errors=True)
    schema = StoreSchema(seq_len=T, k=K, vocab_size=V, hidden_layers=(LAYER,), hidden_dim=D, profile=profile,
                         rows_per_unit=rows_per_unit, tokenizer={"sha256": "bench", "vocab_size": V},
                         teacher={"name": "synthetic", "fingerprint": "bench"}, packing={"rule": "noam"})
    w = create_store(url, schema, num_rows=rows)
    t = time.perf_counter()
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=data["tokens"][a:b], topk_ids=data["ids"][a:b], topk_logprobs=data["lp"][a:b],
                     hidden={LAYER: data["hidden"][a:b]})
    write_s = time.perf_counter() - t
    info = inspect_store(url)
    disk = info["bytes_on_disk"]
    raw1 = raw_read(url)
    r = StoreReader(url)
    # Timed like a data loader: each batch is decoded, used, dropped (keeping
    # every batch would add first-touch page faults of the whole output).
    t = time.perf_counter()
    for a in range(0, rows, read_batch):
        got = r.read(np.arange(a, min(rows, a + read_batch)))
    read_s = time.perf_counter() - t
    del got
    raw2 = raw_read(url)
    raw_bytes, raw_s = min((raw1, raw2), key=lambda x: x[1])
    reuse_bytes, reuse_s = raw_read(url, reuse_buffer=True)
    names = [s["name"] for s in info["arrays"]]
    t = time.perf_counter()
    for a in range(0, rows, read_batch):
        r.read_stored(np.arange(a, min(rows, a + read_batch)), names)
    stored_s = time.perf_counter() - t
    decoded = r.read(np.arange(rows))  # untimed, for the fidelity numbers
    tokens = rows * T
    mb = disk / 1e6
    return decoded, {
        "profile": profile, "rows": rows, "tokens": tokens, "rows_per_unit": rows_per_unit,
        "bytes_on_disk": disk, "bytes_per_token": disk / tokens,
        "bytes_per_token_by_array": {a["name"]: a["bytes_per_token"] for a in info["arrays"]},
        "write_s": write_s, "write_MB_s": mb / write_s, "write_tokens_s": tokens / write_s,
        "read_s": read_s, "read_MB_s": mb / read_s, "read_tokens_s": tokens / read_s,
        "read_stored_no_decode_MB_s": mb / stored_s,
        "raw_read_MB_s": raw_bytes / 1e6 / raw_s, "raw_read_MB_s_before_after": [
            raw1[0] / 1e6 / raw1[1], raw2[0] / 1e6 / raw2[1]],
        "read_vs_raw": (mb / read_s) / (raw_bytes / 1e6 / raw_s),
        "read_stored_vs_raw": (mb / stored_s) / (raw_bytes / 1e6 / raw_s),
        "raw_readinto_reused_buffer_MB_s": reuse_bytes / 1e6 / reuse_s,
        "read_vs_raw_readinto": (mb / read_s) / (reuse_bytes / 1e6 / reuse_s),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=12, help="rows of T=2048 tokens (default 12)")
    p.add_argument("--rows_per_unit", type=int, default=4)
    p.add_argument("--read_batch", type=int, default=4, help="rows per StoreReader.read call")
    p.add_argument("--dir", default="/tmp/store_bench")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "store_bench.json"))
    p.add_argument("--keep", action="store_true", help="keep the written stores")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    ids, lp = synth_topk(rng, args.rows)
    data = {"tokens": rng.integers(0, V, (args.rows, T), dtype=np.int32), "ids": ids, "lp": lp,
            "hidden": synth_hidden(rng, args.rows)}
    gen_s = time.perf_counter() - t
    results, decoded = [], {}
    for profile in ("exact", "compact"):
        decoded[profile], res = run_profile(profile, data, args.dir, args.rows_per_unit, args.read_batch)
        results.append(res)
    h_in, h_ex, h_co = data["hidden"], decoded["exact"][f"hidden/{LAYER}"], decoded["compact"][f"hidden/{LAYER}"]
    lp_ex, lp_co = decoded["exact"]["topk_logprobs"], decoded["compact"]["topk_logprobs"]
    for res, h, lpd in ((results[0], h_ex, lp_ex), (results[1], h_co, lp_co)):
        p1, mn = cos_p1(h, h_in)
        res["fidelity_vs_input"] = {"cos_p1": p1, "cos_min": mn, "rel_mse": rel_mse(h, h_in),
                                    "topk_kl": topk_kl(data["lp"], lpd)}
    p1, mn = cos_p1(h_co, h_ex)
    results[1]["fidelity_vs_exact"] = {"cos_p1": p1, "cos_min": mn, "rel_mse": rel_mse(h_co, h_ex),
                                       "topk_kl": topk_kl(lp_ex, lp_co),
                                       "ids_equal": bool((decoded["exact"]["topk_ids"]
                                                          == decoded["compact"]["topk_ids"]).all())}
    goals = {"exact_read_decoded_ge_70pct_raw": results[0]["read_vs_raw"] >= 0.7,
             "exact_read_stored_ge_70pct_raw": results[0]["read_stored_vs_raw"] >= 0.7,
             "compact_le_3000_B_token": results[1]["bytes_per_token"] <= 3000,
             "compact_cos_p1_ge_0.9995": results[1]["fidelity_vs_exact"]["cos_p1"] >= 0.9995,
             "compact_kl_le_1e-3": results[1]["fidelity_vs_exact"]["topk_kl"] <= 1e-3}
    report = {"geometry": {"T": T, "k": K, "D": D, "V": V, "rows": args.rows, "tokens": args.rows * T},
              "machine": {"cpus": os.cpu_count()}, "data_gen_s": gen_s, "profiles": results, "goals": goals,
              "note": "page-cache reads; raw = plain-Python sequential readinto of the same files, same state"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"{'profile':8s} {'B/token':>8s} {'write MB/s':>10s} {'write tok/s':>11s} {'read MB/s':>9s} "
          f"{'read tok/s':>10s} {'stored MB/s':>11s} {'raw MB/s':>8s} {'read/raw':>8s} {'stored/raw':>10s} "
          f"{'cos p1':>8s} {'KL':>9s}")
    for res in results:
        fid = res.get("fidelity_vs_exact", res["fidelity_vs_input"])
        print(f"{res['profile']:8s} {res['bytes_per_token']:8.1f} {res['write_MB_s']:10.1f} "
              f"{res['write_tokens_s']:11.0f} {res['read_MB_s']:9.1f} {res['read_tokens_s']:10.0f} "
              f"{res['read_stored_no_decode_MB_s']:11.1f} {res['raw_read_MB_s']:8.1f} {res['read_vs_raw']:8.2f} "
              f"{res['read_stored_vs_raw']:10.2f} {fid['cos_p1']:8.5f} {fid['topk_kl']:9.2e}")
    print("read = StoreReader.read decoded to float32; stored = the encoded arrays (I/O + crc32c, no decode);")
    print("raw = plain-Python read of the same files; MB = stored bytes.")
    print("fidelity: exact vs the float32 input, compact vs exact.  goals:", goals)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
