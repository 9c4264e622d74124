"""One script for a lent accelerator (GPU or TPU host): the numbers no CPU can give, as JSON.

    bash bench/device_check.sh                 # on the device host, <= 8 minutes
    python bench/device_check.py --tiny        # the same sections at tiny shapes (CPU test)

Sections (each timed on its own, each failure recorded and the rest still run):

- ``topk``: ``lax.top_k`` vs ``lax.approx_max_k`` over [N, V] float32 / bf16 logits at
  V = 262,144, k = 128: tokens/s of each and approx's recall of the exact ids.
- ``extract``: the dump's extraction step (``teacher_dump.extract``) vs the bare
  forward (``trainer.model.gemma3.forward``) of a random gemma3-4b at V = 262,144,
  T = 2048, bf16: tokens/s of each and their ratio.
- ``encode``: the device encoders (``teacher_dump.encode``) vs the host encoders
  (``store.profiles``) on the same extracted signal, per profile: byte-identical or not.
- ``train``: gemma3-270m NLL / KD / HLDC / HLDF (phase 1) steps on synthetic batches
  already on the device and fed by the loader from a random local store
  (``bench/train_bench.bench_method``): tokens/s, MFU against the measured bf16
  matmul peak and against ``peak_flops_per_device``, KD/NLL step-time ratio,
  loader/synthetic ratio.

Every section checks the time left (``--budget-s``) before it starts and is skipped,
saying so, when too little is left. JSON goes to ``--out`` (default
bench/results/device_check_<platform>.json) and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Full shapes (the mission's) and --tiny shapes (a CPU test runs all sections in seconds).
SHAPES = {
    "full": {
        "topk_tokens": 2048,
        "vocab": 262_144,
        "k": 128,
        "teacher": "gemma3-4b",
        "extract_rows": 4,
        "seq_len": 2048,
        "token_tile": 2048,
        "student_config": "gemma3_270m",
        "train_batch": 8,
        "train_steps": 5,
        "store_rows": 32,
        "matmul": 8192,
    },
    "tiny": {
        "topk_tokens": 64,
        "vocab": 4096,
        "k": 16,
        "teacher": "tiny",
        "extract_rows": 2,
        "seq_len": 32,
        "token_tile": 32,
        "student_config": "tiny",
        "train_batch": 4,
        "train_steps": 2,
        "store_rows": 8,
        "matmul": 256,
    },
}


def _time(fn, *args, repeats=3):
    """Best-of-`repeats` seconds of fn(*args) after one warm-up call (the compile)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def check_topk(s) -> dict:
    """lax.top_k vs approx_max_k: speed and recall at V, k."""
    n, V, k = s["topk_tokens"], s["vocab"], s["k"]
    out = {"tokens": n, "vocab": V, "k": k}
    for dtype in ("float32", "bfloat16"):
        logits = jax.random.normal(jax.random.key(0), (n, V), jnp.float32).astype(dtype)
        exact = jax.jit(lambda x: jax.lax.top_k(x, k)[1])
        approx = jax.jit(lambda x: jax.lax.approx_max_k(x, k)[1])
        t_exact, t_approx = _time(exact, logits), _time(approx, logits)
        ids_e, ids_a = np.asarray(exact(logits)), np.asarray(approx(logits))
        recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids_e, ids_a)])
        out[dtype] = {
            "top_k_tokens_per_s": n / t_exact,
            "approx_max_k_tokens_per_s": n / t_approx,
            "approx_recall": float(recall),
        }
    return out


def _teacher(s):
    from teacher_dump import teacher as teacher_lib
    from trainer.model import gemma3 as model
    from trainer.model import model_config

    cfg = model_config.get_config(s["teacher"], vocab_size=s["vocab"], dtype="bfloat16")
    params = jax.jit(lambda key: teacher_lib.cast_for_inference(model.init_params(cfg, key), cfg))(
        jax.random.key(0)
    )
    tokens = jax.random.randint(jax.random.key(1), (s["extract_rows"], s["seq_len"]), 0, s["vocab"])
    return cfg, params, tokens


def check_extract(s, state) -> dict:
    """Extraction step vs bare forward, tokens/s."""
    from teacher_dump import extract
    from trainer.model import gemma3 as model

    cfg, params, tokens = _teacher(s)
    fn = extract.make_extract_fn(cfg, k=s["k"], token_tile=s["token_tile"])
    bare = jax.jit(lambda p, t: model.forward(p, t, cfg).final_hidden_BxTxD)
    n = tokens.size
    t_extract, t_bare = _time(fn, params, tokens), _time(bare, params, tokens)
    state["teacher"] = (cfg, params, tokens, fn)
    return {
        "teacher": s["teacher"],
        "vocab": s["vocab"],
        "rows": s["extract_rows"],
        "seq_len": s["seq_len"],
        "extract_tokens_per_s": n / t_extract,
        "bare_forward_tokens_per_s": n / t_bare,
        "extract_over_bare_time": t_extract / t_bare,
    }


def check_encode(s, state) -> dict:
    """Device encoders vs host encoders on one extracted signal: byte identity per profile."""
    from store import StoreSchema, profiles
    from teacher_dump import encode

    if "teacher" not in state:
        raise RuntimeError("needs the extract section's signal (it did not run)")
    cfg, params, tokens, fn = state["teacher"]
    signal = fn(params, tokens)
    host = jax.device_get(signal)
    out = {}
    for name in ("exact", "compact", "lean"):
        schema = StoreSchema(
            seq_len=s["seq_len"],
            k=s["k"],
            vocab_size=s["vocab"],
            hidden_layers=tuple(host["hidden"]),
            hidden_dim=cfg.d_model,
            profile=name,
        )
        prof = profiles.get_profile(name)
        device = jax.device_get(
            jax.jit(lambda sig: encode.encode_signal(sig, schema, prof))(signal)  # noqa: B023 (called at once)
        )
        want = dict(
            prof.encode_topk(
                np.asarray(host["topk_ids"]), np.asarray(host["topk_logprobs"]), s["vocab"]
            )
        )
        for layer, h in host["hidden"].items():
            want.update(prof.encode_hidden(layer, np.asarray(h)))
        got = device["arrays"]
        differ = sorted(
            k
            for k in want
            if k not in got or np.asarray(got[k]).tobytes() != np.asarray(want[k]).tobytes()
        )
        out[name] = {"identical": not differ, "arrays": len(want), "differ": differ}
    return out


def _matmul_peak(n) -> float:
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / _time(f, a)


def check_train(s, tmp, methods=("nll", "kd", "hldc", "hldf")) -> dict:
    """gemma3-270m steps per method: synthetic vs loader feed, MFU, KD/NLL ratio."""
    import train_bench

    from trainer.training import config as config_lib
    from trainer.training import loop as train

    peak = _matmul_peak(s["matmul"])
    config = config_lib.load_config(
        s["student_config"],
        [
            f"run_dir={tmp}/run",
            f"store.url={tmp}/store",
            f"data.batch_size={s['train_batch']}",
            f"data.seq_len={s['seq_len']}",
            "data.num_threads=2",
            "data.prefetch_buffer_size=2",
            "optim.warmup_steps=1",
            "hldf.warmup_steps=1",
        ],
    )
    if not config.teacher.d_model:
        config_lib.apply_overrides(config, ["teacher.d_model=32", "teacher.hidden_layer=1"])
    config_lib.validate(config)
    model_cfg = train.model_config_from(config)
    train_bench.write_random_store(f"{tmp}/store", config, model_cfg, s["store_rows"])
    mesh = train.sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rows = {}
    for method in methods:
        row = train_bench.bench_method(
            config, model_cfg, method, config.store.url, s["train_steps"], mesh, repeats=1
        )
        tokens_per_s = row["synthetic_tokens_per_s"]
        row["mfu_vs_measured_matmul"] = row["flops_per_token"] * tokens_per_s / (peak * mesh.size)
        rows[method] = row
    return {
        "config": s["student_config"],
        "batch": config.data.batch_size,
        "seq_len": config.data.seq_len,
        "devices": mesh.size,
        "measured_bf16_matmul_flops": peak,
        "assumed_peak_flops_per_device": config.peak_flops_per_device,
        "kd_over_nll_step_time": (
            rows["kd"]["synthetic_step_s"] / rows["nll"]["synthetic_step_s"]
            if {"kd", "nll"} <= set(rows)
            else None
        ),
        "methods": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU test)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="seconds for all sections (default 450; the script must end within 8 min)",
    )
    parser.add_argument(
        "--sections",
        default="topk,extract,encode,train",
        help="comma-separated subset (default: all)",
    )
    parser.add_argument(
        "--methods",
        default="nll,kd,hldc,hldf",
        help="train section's methods (default: all four; HLDF times its phase 1)",
    )
    parser.add_argument(
        "--out", default="", help="JSON path (default bench/results/device_check_<platform>.json)"
    )
    args = parser.parse_args(argv)
    s = SHAPES["tiny" if args.tiny else "full"]
    # Seconds a section needs at least to be started (compile + a few steps), by size.
    need = {"topk": 20, "extract": 150, "encode": 40, "train": 180} if not args.tiny else {}
    dev = jax.devices()[0]
    result = {
        "bench": "device_check",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}",
        "jax": jax.__version__,
        "shapes": "tiny" if args.tiny else "full",
        "sections": {},
    }
    start, state = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "topk": lambda: check_topk(s),
            "extract": lambda: check_extract(s, state),
            "encode": lambda: check_encode(s, state),
            "train": lambda: check_train(s, tmp, args.methods.split(",")),
        }
        for name in args.sections.split(","):
            if name not in runs:
                parser.error(f"unknown section {name!r}; pass a subset of {sorted(runs)}")
            left = args.budget_s - (time.perf_counter() - start)
            if left < need.get(name, 0):
                result["sections"][name] = {
                    "skipped": f"{left:.0f} s left of --budget-s, needs ~{need[name]} s"
                }
                continue
            t0 = time.perf_counter()
            try:
                out = runs[name]()
            except Exception as err:  # noqa: BLE001 — one section's failure must not lose the others'.
                out = {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(limit=4),
                }
            out["seconds"] = time.perf_counter() - t0
            result["sections"][name] = out
    result["seconds"] = time.perf_counter() - start
    path = args.out or os.path.join(HERE, "results", f"device_check_{dev.platform}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=float)
    print(format_table(result))
    print(f"wrote {path}")
    return 0 if not any("error" in v for v in result["sections"].values()) else 1


def format_table(r: dict) -> str:
    """The printed summary."""
    lines = [
        f"device_check on {r['device']} (jax {r['jax']}, {r['shapes']} shapes, {r['seconds']:.0f} s)"
    ]
    sec = r["sections"]
    for name, out in sec.items():
        if "error" in out or "skipped" in out:
            lines.append(f"  {name}: {out.get('error') or 'skipped: ' + out['skipped']}")
            continue
        if name == "topk":
            for dt in ("float32", "bfloat16"):
                o = out[dt]
                lines.append(
                    f"  topk {dt}: top_k {o['top_k_tokens_per_s']:,.0f} tok/s, approx_max_k "
                    f"{o['approx_max_k_tokens_per_s']:,.0f} tok/s, recall {o['approx_recall']:.4f}"
                )
        elif name == "extract":
            lines.append(
                f"  extract {out['teacher']} V={out['vocab']}: {out['extract_tokens_per_s']:,.0f} "
                f"tok/s vs bare forward {out['bare_forward_tokens_per_s']:,.0f} "
                f"(time ratio {out['extract_over_bare_time']:.2f})"
            )
        elif name == "encode":
            lines.append(
                "  encode device vs host: "
                + ", ".join(
                    f"{p} {'identical' if o['identical'] else 'DIFFER ' + str(o['differ'])}"
                    for p, o in out.items()
                    if isinstance(o, dict)
                )
            )
        elif name == "train":
            ratio = out["kd_over_nll_step_time"]
            lines.append(
                f"  train {out['config']} B={out['batch']} T={out['seq_len']}: KD/NLL step time "
                f"{'-' if ratio is None else f'{ratio:.3f}'}; matmul peak "
                f"{out['measured_bf16_matmul_flops'] / 1e12:.1f} TFLOP/s"
            )
            for m, row in out["methods"].items():
                lines.append(
                    f"    {m:5} synth {row['synthetic_tokens_per_s']:,.0f} tok/s  loader "
                    f"{row['loader_tokens_per_s']:,.0f} tok/s (x{row['loader_over_synthetic']:.2f})  "
                    f"MFU {100 * row['mfu_vs_measured_matmul']:.1f}% of measured, "
                    f"{100 * row['synthetic_mfu']:.1f}% of assumed peak"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
