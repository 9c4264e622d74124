"""Write benchmark: exact host write vs compact host encode+write vs compact device encode+write.

(``--profile lean``: the same with lean in place of compact.)

One run, same synthetic signal (bench/store_bench.py's: real log-softmax top-k
of Zipf-prior logits, heavy-tailed activations with massive channels), store
bench geometry T=2048, k=128, D=2560, V=32,000 (``--vocab 262144``: Gemma 3's; ``--samples S``:
the sampled/* family too), interleaved repeats:

  * exact_host: ``StoreWriter.write_unit`` of an exact store (float16 casts on the host);
  * compact_host: ``write_unit`` of a compact store (the numpy encoder of store.profiles);
  * compact_device: the extraction outputs are on the device (placed there
    untimed, as the extraction step leaves them); timed: the jitted
    ``teacher_dump.encode`` encoder, the device->host copy of the encoded
    bytes only, ``StoreWriter.write_unit_encoded``, one unit after the other;
  * compact_device_overlapped: the same, with unit u+1's encode and copy
    dispatched before unit u is written (what teacher_dump/loop.py does);
  * compact_encoded_write: ``write_unit_encoded`` of units encoded and
    fetched beforehand (untimed): the host's whole share when the encoder
    runs on an accelerator, whose encode is hidden behind the next forward.

tokens/s = tokens written / best time over repeats. Also reported: the
device->host bytes per token (float32 signal vs encoded), and how many stored
elements of the device-encoded store differ from the host-encoded one (0 =
byte-identical). On a CPU-only machine the "device" is the same CPU, so the
device encode competes with the writer for the cores.

    python bench/encode_bench.py [--rows 8] [--rows_per_unit 2] [--repeats 3] [--dir /tmp/encode_bench]
"""

import argparse
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.store_bench import LAYER, VOCABS, D, K, T, synth_hidden, synth_logits  # noqa: E402
from store import StoreReader, StoreSchema, create_store, profiles  # noqa: E402
from teacher_dump import encode  # noqa: E402

SAMPLED = ("sampled_ids", "sampled_counts", "sampled_logprobs")


def _schema(profile, rows_per_unit, V, S):
    return StoreSchema(
        seq_len=T,
        k=K,
        vocab_size=V,
        hidden_layers=(LAYER,),
        hidden_dim=D,
        profile=profile,
        rows_per_unit=rows_per_unit,
        samples=S,
        tokenizer={"sha256": "bench", "vocab_size": V},
        teacher={"name": "synthetic", "fingerprint": "bench"},
        packing={"rule": "noam"},
    )


def _host_write(url, schema, data):
    w = create_store(url, schema, num_rows=data["tokens"].shape[0])
    t = time.perf_counter()
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        sampled = {n: data[n][a:b] for n in SAMPLED} if schema.samples else {}
        w.write_unit(
            u,
            tokens=data["tokens"][a:b],
            topk_ids=data["ids"][a:b],
            topk_logprobs=data["lp"][a:b],
            hidden={LAYER: data["hidden"][a:b]},
            **sampled,
        )
    return time.perf_counter() - t


def _device_write(url, schema, data, signals_dev, fn, overlapped):
    """Seconds to encode on the device, fetch and write every unit; (seconds, encode+fetch seconds)."""
    w = create_store(url, schema, num_rows=data["tokens"].shape[0])
    units = list(range(w.num_units))
    t = time.perf_counter()
    fetch_s = 0.0
    pending = fn(signals_dev[0])
    for u in units:
        current = pending
        if overlapped and u + 1 < len(units):
            pending = fn(signals_dev[u + 1])  # async dispatch: encodes while unit u is written
            for leaf in jax.tree_util.tree_leaves(pending):
                leaf.copy_to_host_async()
        t0 = time.perf_counter()
        a, b = w.unit_rows(u)
        arrays = encode.host_arrays(current, first_row=a)
        fetch_s += time.perf_counter() - t0
        arrays["tokens"] = data["tokens"][a:b]
        w.write_unit_encoded(u, arrays)
        if not overlapped and u + 1 < len(units):
            pending = fn(signals_dev[u + 1])
    return time.perf_counter() - t, fetch_s


def _encoded_write(url, schema, data, encoded):
    w = create_store(url, schema, num_rows=data["tokens"].shape[0])
    t = time.perf_counter()
    for u in range(w.num_units):
        w.write_unit_encoded(u, encoded[u])
    return time.perf_counter() - t


def _differences(url_a, url_b, rows):
    """{array: fraction of stored elements that differ} between two stores of one schema."""
    ra, rb = StoreReader(url_a), StoreReader(url_b)
    names = [s.name for s in profiles.get_profile(ra.schema.profile).arrays(ra.schema)]
    sa, sb = ra.read_stored(np.arange(rows), names), rb.read_stored(np.arange(rows), names)
    return {n: float(np.mean(sa[n] != sb[n])) for n in names}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8, help="rows of T=2048 tokens (default 8)")
    p.add_argument("--rows_per_unit", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved timing repeats per mode (best kept)"
    )
    p.add_argument(
        "--profile",
        default="compact",
        choices=("compact", "lean"),
        help="the profile encoded on the host and on the device (modes are named after it)",
    )
    p.add_argument(
        "--vocab", type=int, default=VOCABS[0], choices=VOCABS, help="V (default 32,000)"
    )
    p.add_argument(
        "--samples", type=int, default=0, help="sampled draws per position (default 0: none)"
    )
    p.add_argument(
        "--hidden_bf16",
        action="store_true",
        help="round the activations to bfloat16 values (a bf16 teacher's): |y| ties, where host and "
        "device both take the lower channel (the encodings stay byte-identical)",
    )
    p.add_argument("--dir", default="/tmp/encode_bench")
    p.add_argument(
        "--out", default=None, help="JSON path (default bench/results/encode_bench[_lean].json)"
    )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            "results",
            "encode_bench.json"
            if args.profile == "compact"
            else f"encode_bench_{args.profile}.json",
        )
    rng = np.random.default_rng(0)
    V, S = args.vocab, args.samples
    data = synth_logits(rng, args.rows, V, max(S, 1))
    data.update(
        tokens=rng.integers(0, V, (args.rows, T), dtype=np.int32),
        hidden=synth_hidden(rng, args.rows),
    )
    if args.hidden_bf16:
        data["hidden"] = np.asarray(
            jax.numpy.asarray(data["hidden"]).astype("bfloat16").astype("float32")
        )
    tokens = args.rows * T
    P = args.profile
    schema = _schema(P, args.rows_per_unit, V, S)
    R = args.rows_per_unit
    # The extraction step's outputs, left on the device (untimed).
    signals_dev = [
        jax.device_put(
            {
                "topk_ids": data["ids"][a : a + R],
                "topk_logprobs": data["lp"][a : a + R],
                "hidden": {LAYER: data["hidden"][a : a + R]},
                **({n: data[n][a : a + R] for n in SAMPLED} if S else {}),
            }
        )
        for a in range(0, args.rows, R)
    ]
    fn = jax.jit(lambda s: encode.encode_signal(s, schema))
    warm = fn(signals_dev[0])  # compile, untimed
    encoded_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(warm["arrays"]))
    signal_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(signals_dev[0]))
    encoded = []
    for u, sig in enumerate(signals_dev):
        arrays = encode.host_arrays(fn(sig), first_row=u * R)
        arrays["tokens"] = data["tokens"][u * R : (u + 1) * R]
        encoded.append(arrays)
    shutil.rmtree(args.dir, ignore_errors=True)
    url = {
        m: os.path.join(args.dir, m)
        for m in (
            "exact_host",
            P + "_host",
            P + "_device",
            P + "_device_overlapped",
            P + "_encoded_write",
        )
    }
    passes = {
        "exact_host": lambda: (
            _host_write(url["exact_host"], _schema("exact", R, V, S), data),
            None,
        ),
        P + "_host": lambda: (_host_write(url[P + "_host"], schema, data), None),
        P + "_device": lambda: _device_write(
            url[P + "_device"], schema, data, signals_dev, fn, False
        ),
        P + "_device_overlapped": lambda: _device_write(
            url[P + "_device_overlapped"], schema, data, signals_dev, fn, True
        ),
        P + "_encoded_write": lambda: (
            _encoded_write(url[P + "_encoded_write"], schema, data, encoded),
            None,
        ),
    }
    times = {m: [] for m in passes}
    fetch = {m: [] for m in passes}
    order = list(passes)
    for i in range(args.repeats):
        for m in order[i % len(order) :] + order[: i % len(order)]:
            shutil.rmtree(url[m], ignore_errors=True)
            s, f = passes[m]()
            times[m].append(s)
            fetch[m].append(f)
    modes = {
        m: {
            "best_s": min(v),
            "median_s": float(np.median(v)),
            "tokens_s": tokens / min(v),
            "each_s": v,
        }
        for m, v in times.items()
    }
    for m in (P + "_device", P + "_device_overlapped"):
        modes[m]["encode_and_fetch_s_each"] = fetch[m]
    exact_rate = modes["exact_host"]["tokens_s"]
    report = {
        "geometry": {
            "T": T,
            "k": K,
            "D": D,
            "V": V,
            "samples": S,
            "rows": args.rows,
            "rows_per_unit": R,
            "tokens": tokens,
            "hidden_bf16": args.hidden_bf16,
        },
        "machine": {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()][:1],
            "cpus": os.cpu_count(),
            "loadavg_1m_at_end": os.getloadavg()[0],
        },
        "modes": modes,
        "vs_exact_host": {m: r["tokens_s"] / exact_rate for m, r in modes.items()},
        "device_to_host_bytes_per_token": {
            "float32_signal": signal_bytes / (R * T),
            P + "_encoded": encoded_bytes / (R * T),
        },
        "device_vs_host_fraction_of_elements_differing": _differences(
            url[P + "_host"], url[P + "_device"], args.rows
        ),
        "goal_" + P + "_device_ge_exact_host": modes[P + "_device_overlapped"]["tokens_s"]
        >= exact_rate,
        "goal_" + P + "_encoded_write_ge_exact_host": modes[P + "_encoded_write"]["tokens_s"]
        >= exact_rate,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"{'mode':26s} {'tokens/s':>10s} {'vs exact':>8s} {'best s':>7s} {'median s':>8s}")
    for m, r in modes.items():
        print(
            f"{m:26s} {r['tokens_s']:10.0f} {report['vs_exact_host'][m]:8.2f} {r['best_s']:7.2f} "
            f"{r['median_s']:8.2f}"
        )
    d2h = report["device_to_host_bytes_per_token"]
    print(
        f"device->host B/token: float32 signal {d2h['float32_signal']:.0f}, "
        f"{P} encoded {d2h[P + '_encoded']:.0f}; backend {jax.default_backend()}"
    )
    diff = report["device_vs_host_fraction_of_elements_differing"]
    print(
        "device vs host encoding, fraction of stored elements differing:",
        {n: f"{v:.2e}" for n, v in diff.items() if v} or "none (byte-identical)",
    )
    shutil.rmtree(args.dir, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
