"""Train-step throughput per method: synthetic in-memory batches vs the real loader.

    .venv/bin/python bench/train_bench.py                      # tiny CPU config
    python bench/train_bench.py --config trainer/configs/gemma3_270m.py \
        --set data.batch_size=32 --set data.seq_len=2048 --steps 20   # one GPU

For each method (nll, kd, hldc) the same jitted step runs (a) on one batch
already on the device and (b) fed by trainer.training.data from a local store written
here with random contents of the config's shape. Both feeds carry the store's
arrays as stored (``--profile``); the step decodes them on the device
(trainer.training.decode), so its time includes the decode. Reports step time, tokens/s,
MFU (model FLOPs/token from trainer.flops over config.peak_flops_per_device),
the loader/synthetic ratio, XLA's memory analysis of the compiled step
(arguments + outputs + temporaries, per method), and peak memory (device
stats where the backend has them, else the process-wide max RSS, which only
grows from method to method). JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from store import StoreReader, StoreSchema, create_store  # noqa: E402
from trainer.training import config as config_lib  # noqa: E402
from trainer.training import data, decode, methods
from trainer.training import loop as train


def write_random_store(path, config, model_cfg, num_rows, profile="exact"):
    """A store with random tokens/top-k/hidden in the config's shape."""
    T, K, V = config.data.seq_len, config.data.k, model_cfg.vocab_size
    D, layer = config.teacher.d_model, config.teacher.hidden_layer
    rows_per_unit = min(num_rows, 64)
    schema = StoreSchema(
        seq_len=T,
        k=K,
        vocab_size=V,
        hidden_layers=(layer,),
        hidden_dim=D,
        rows_per_unit=rows_per_unit,
        profile=profile,
        tokenizer={"sha256": "0" * 64},
        teacher={"name": "random", "d_model": D},
        packing={"rule": "noam"},
    )
    writer = create_store(path, schema, num_rows=num_rows)
    for u in range(writer.num_units):
        start, stop = writer.unit_rows(u)
        b = data.synthetic_batch(stop - start, T, V, k=K, hidden_dim=D, seed=u, as_loaded=False)
        writer.write_unit(
            u,
            tokens=b["tokens"],
            topk_ids=b["topk_ids"],
            topk_logprobs=b["topk_logprobs"],
            hidden={layer: b["hidden"]},
        )
    return path


def peak_memory_bytes() -> tuple[int, str]:
    """Peak device memory if the backend reports it, else this process's max RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def time_steps(runner, state, batches, steps, put=None):
    """Seconds per step over `steps` steps after one warm-up step (compile)."""
    put = put or runner.put_batch
    state, m = runner.step(state, put(next(batches)))
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = runner.step(state, put(next(batches)))
    jax.block_until_ready((state, m))
    return (time.perf_counter() - start) / steps, state


def bench_method(config, model_cfg, method, store_url, steps, mesh, repeats):
    """One method: synthetic-fed and loader-fed timings."""
    config = copy.deepcopy(config)
    config.method = method
    phase = methods.phases(config, model_cfg.num_layers)[0]
    # The schedule length only shapes the LR (the bench runs far fewer steps);
    # it must hold the warm-up plus the decay for the schedule to be valid.
    schedule_steps = max(10 * steps, 2 * config.optim.warmup_steps + 10)
    plan = train.PhasePlan(
        phase=phase,
        num_steps=schedule_steps,
        flops_per_token=train.phase_flops_per_token(config, model_cfg, phase),
    )
    # The loader ships the stored arrays; the step decodes them on the device.
    reader = StoreReader(store_url)
    runner = train.PhaseRunner(config, model_cfg, plan, mesh, decode.Encoding.from_reader(reader))
    state = runner.init_state(jax.random.key(0))
    host = data.synthetic_batch(
        config.data.batch_size,
        config.data.seq_len,
        model_cfg.vocab_size,
        k=config.data.k,
        hidden_dim=config.teacher.d_model,
        profile=reader.schema.profile,
        hidden_layer=config.teacher.hidden_layer,
    )
    fixed = runner.put_batch(host)

    class _OnDevice:
        """Yields the same device-resident batch (no host work at all)."""

        def __next__(self):
            return fixed

    source = data.StoreSource(store_url, phase.fields)
    it = data.make_iterator(
        source,
        config.data.batch_size,
        seed=0,
        num_threads=config.data.num_threads,
        prefetch_buffer_size=config.data.prefetch_buffer_size,
    )
    # Alternate the two feeds and keep each one's best run: on a shared machine
    # the minimum is the least noisy estimate of what the step itself costs.
    synth_s = loader_s = float("inf")
    for _ in range(repeats):
        sec, state = time_steps(runner, state, _OnDevice(), steps, put=lambda b: b)
        synth_s = min(synth_s, sec)
        sec, state = time_steps(runner, state, it, steps)
        loader_s = min(loader_s, sec)
    tokens = config.data.batch_size * config.data.seq_len
    peak_flops = config.peak_flops_per_device * mesh.size
    row = {"method": method, "flops_per_token": plan.flops_per_token}
    for name, sec in (("synthetic", synth_s), ("loader", loader_s)):
        row[f"{name}_step_s"] = sec
        row[f"{name}_tokens_per_s"] = tokens / sec
        row[f"{name}_mfu"] = plan.flops_per_token * tokens / sec / peak_flops
    row["loader_over_synthetic"] = synth_s / loader_s
    row["peak_memory_bytes"], row["peak_memory_kind"] = peak_memory_bytes()
    # XLA's own accounting of the compiled step (works on every backend, and is
    # per method, unlike a process-wide max RSS): arguments + outputs + temps.
    analysis = runner.step.lower(state, fixed).compile().memory_analysis()
    if analysis is not None:
        row["xla_step_temp_bytes"] = int(analysis.temp_size_in_bytes)
        row["xla_step_total_bytes"] = int(
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes
        )
    return row


def main(argv=None) -> int:
    """CLI; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="trainer/configs/tiny.py")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--methods", default="nll,kd,hldc")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per feed")
    parser.add_argument("--rows", type=int, default=256, help="rows in the bench store")
    parser.add_argument("--store", default="", help="existing store (default: write one)")
    parser.add_argument("--profile", default="exact", help="profile of the store it writes")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = config_lib.load_config(
            args.config,
            [f"run_dir={tmp}/run", f"store.url={args.store or tmp + '/store'}", *args.set],
        )
        config_lib.validate(config)
        model_cfg = train.model_config_from(config)
        if not args.store:
            write_random_store(
                f"{tmp}/store",
                config,
                model_cfg,
                max(args.rows, 2 * config.data.batch_size),
                args.profile,
            )
        mesh = train.sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        rows = [
            bench_method(config, model_cfg, m, config.store.url, args.steps, mesh, args.repeats)
            for m in args.methods.split(",")
        ]
    device = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{mesh.size}"
    result = {
        "bench": "train_bench",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "device": device,
        "config": args.config,
        "overrides": args.set,
        "model": model_cfg.name,
        "batch": config.data.batch_size,
        "seq_len": config.data.seq_len,
        "vocab": model_cfg.vocab_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"train_bench_{jax.devices()[0].platform}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(
        f"device {device}  model {model_cfg.name}  B={config.data.batch_size} "
        f"T={config.data.seq_len} V={model_cfg.vocab_size}"
    )
    print(
        f"{'method':7} {'synth tok/s':>12} {'loader tok/s':>12} {'ratio':>6} "
        f"{'MFU synth':>9} {'step ms':>8} {'XLA MB':>7} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['method']:7} {r['synthetic_tokens_per_s']:12.4g} "
            f"{r['loader_tokens_per_s']:12.4g} {r['loader_over_synthetic']:6.3f} "
            f"{100 * r['synthetic_mfu']:8.2f}% {1e3 * r['synthetic_step_s']:8.2f} "
            f"{r.get('xla_step_total_bytes', 0) / 2**20:7.2f} "
            f"{r['peak_memory_bytes'] / 2**20:8.1f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
