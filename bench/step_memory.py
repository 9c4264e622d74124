"""Compile the trainer's own step for a shape and report what the compiler says it needs.

    python bench/step_memory.py --config gemma3_270m:kd --batch 16 --seq 2048 \
        --host-devices 4 --set mesh.fsdp=4 [--topology v5p:2x2x1] [--dump DIR] [--json OUT]

Nothing is allocated: `PhaseRunner(...).step` is lowered with the abstract
train state and an abstract exact-profile batch, compiled, and
`compiled.memory_analysis()` gives per-device argument / temporary / output
bytes. `--topology` compiles for TPU chips through libtpu (it must be
importable; JAX_PLATFORMS=cpu is enough); otherwise the CPU compiler runs on
`--host-devices` forced host devices. `--dump DIR` keeps XLA's dump (its
`*buffer-assignment.txt` names every temporary); `--top N` prints the N
largest buffers of that assignment. `--time N` also runs N steps on CPU with
random data and reports the median step time (CPU only).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="gemma3_270m:kd", help="trainer config NAME[:method]")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--batch", type=int, required=True, help="global batch (rows)")
    p.add_argument("--seq", type=int, required=True, help="tokens per row")
    p.add_argument("--host-devices", type=int, default=4, help="forced CPU devices")
    p.add_argument("--topology", default="", help="TPU topology, e.g. v5p:2x2x1 (needs libtpu)")
    p.add_argument("--phase", type=int, default=1, help="phase index (HLDF: 1 or 2)")
    p.add_argument("--dump", default="", help="XLA dump directory (buffer assignment)")
    p.add_argument("--top", type=int, default=0, help="print the N largest buffers (needs --dump)")
    p.add_argument("--time", type=int, default=0, help="run N timed steps (CPU only)")
    p.add_argument("--json", default="", help="append one JSON line here")
    return p.parse_args(argv)


# HBM per chip (GiB) of the TPU generations a topology name starts with, as the
# compiler reports it when a program does not fit (e.g. "available HBM (95.74G)"
# on v5p); public figures: v5e 16 GB, v6e 32 GB, v4 32 GB.
HBM_GIB = {"v5p": 95.74, "v5e": 15.75, "v6e": 31.25, "v4": 31.25}


def devices_for(topology: str, host_devices: int = 0):
    """Abstract TPU devices of `topology` (libtpu), or the first `host_devices` CPU devices."""
    import jax

    if topology:
        from jax.experimental import topologies

        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    return jax.devices()[:host_devices] if host_devices else jax.devices()


def compile_step(config, devices, phase_index: int = 1):
    """AOT-compiles the trainer's step of `config` (its data.batch_size × data.seq_len).

    Returns:
        (runner, compiled, row): row holds per-device GiB (args, temp, out,
        alias, per_device = args + temp + out - alias) and compile seconds.
    """
    import jax
    import jax.numpy as jnp

    from store import StoreSchema, profiles
    from trainer.training import decode, loop, methods, sharding

    model_cfg = loop.model_config_from(config)
    phase = [p for p in methods.phases(config, model_cfg.num_layers) if p.index == phase_index][0]
    plan = loop.PhasePlan(
        phase=phase,
        num_steps=10_000,
        flops_per_token=loop.phase_flops_per_token(config, model_cfg, phase),
    )
    mesh = sharding.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices
    )
    B, T = config.data.batch_size, config.data.seq_len
    # The exact profile's stored arrays and dtypes, as the loader ships them (decoded in
    # the step), from the profile's own array specs.
    layer = config.teacher.hidden_layer or 1
    schema = StoreSchema(
        seq_len=T,
        k=config.data.k,
        vocab_size=config.model.vocab_size,
        hidden_layers=(layer,),
        hidden_dim=config.teacher.d_model or model_cfg.d_model,
        profile="exact",
        samples=config.data.samples,
    )
    arrays = profiles.get_profile("exact").field_arrays(schema, normalized=True)
    specs = {a.name: a for field_arrays in arrays.values() for a in field_arrays}
    encoding = decode.Encoding.from_schema(schema, profiles.get_profile("exact").encodings(schema))
    runner = loop.PhaseRunner(config, model_cfg, plan, mesh, encoding)

    def spec(name):
        shape = (B, *specs[name].inner_shape)
        return jax.ShapeDtypeStruct(
            shape, jnp.dtype(specs[name].dtype), sharding=sharding.batch_sharding(mesh, len(shape))
        )

    batch = {k: spec(k) for k in runner.batch_keys}
    t0 = time.perf_counter()
    compiled = runner.step.lower(runner.abstract_state, batch).compile()
    mem = compiled.memory_analysis()
    gib = 2.0**30
    row = {
        "method": config.method,
        "phase": phase_index,
        "model": config.model.name,
        "batch": B,
        "seq": T,
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "remat": config.model.remat,
        "micro_batches": config.data.micro_batches,
        "args_gib": mem.argument_size_in_bytes / gib,
        "temp_gib": mem.temp_size_in_bytes / gib,
        "out_gib": mem.output_size_in_bytes / gib,
        "alias_gib": mem.alias_size_in_bytes / gib,
        "compile_s": time.perf_counter() - t0,
    }
    row["per_device_gib"] = row["args_gib"] + row["temp_gib"] + row["out_gib"] - row["alias_gib"]
    row["temp_bytes_per_token"] = mem.temp_size_in_bytes / (B * T / len(devices))
    return runner, compiled, row


def main(argv=None) -> dict:
    args = _parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if not args.topology:
        flags += f" --xla_force_host_platform_device_count={args.host_devices}"
    if args.dump:
        flags += f" --xla_dump_to={args.dump} --xla_dump_hlo_as_text"
    os.environ["XLA_FLAGS"] = flags.strip()
    import jax
    import numpy as np

    from trainer.training import config as config_lib

    config = config_lib.load_config(
        args.config, [*args.set, f"data.batch_size={args.batch}", f"data.seq_len={args.seq}"]
    )
    devices = devices_for(args.topology, args.host_devices)
    runner, compiled, row = compile_step(config, devices, args.phase)
    row = {"config": args.config, "set": args.set, "platform": args.topology or "cpu", **row}
    if args.topology:
        row["hbm_gib"] = HBM_GIB[args.topology.split(":")[0]]
        row["fits"] = row["per_device_gib"] <= row["hbm_gib"]
    B, T, K = args.batch, args.seq, config.data.k
    if args.time:
        state = runner.init_state(jax.random.key(0))
        rng = np.random.default_rng(0)
        host = {"tokens": rng.integers(0, runner.model_cfg.vocab_size, (B, T), dtype=np.int32)}
        if "topk_ids" in runner.batch_keys:
            host["topk_ids"] = np.tile(np.arange(K, dtype=np.uint16), (B, T, 1))
            host["topk_logprobs"] = np.full((B, T, K), -np.log(K) - 0.1, np.float16)
        if "hidden" in runner.batch_keys:
            d_t = config.teacher.d_model or runner.model_cfg.d_model
            host["hidden"] = rng.normal(size=(B, T, d_t)).astype(np.float16)
        placed = runner.put_batch(host)
        state, m = compiled(state, placed)  # Warm-up (the compiled step: no retrace).
        jax.block_until_ready(m)
        times = []
        for _ in range(args.time):
            t0 = time.perf_counter()
            state, m = compiled(state, placed)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        row["step_s"] = float(np.median(times))
    print(
        " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        flush=True,
    )
    if args.dump and args.top:
        for size, desc in top_buffers(args.dump, args.top):
            print(f"{size / 2**20:10.1f} MiB  {desc}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row


def top_buffers(dump_dir: str, n: int):
    """The n largest logical buffers of the train step's buffer assignment."""
    files = sorted(
        glob.glob(os.path.join(dump_dir, "*train_step*buffer-assignment.txt")), key=os.path.getsize
    )
    if not files:
        return []
    text = open(files[-1], encoding="utf-8").read()
    sizes = []
    for m in re.finditer(
        r"^\s*value: <\d+ ([^>]+)> \(size=(\d+),offset=\d+\): (.*)$", text, re.MULTILINE
    ):
        sizes.append((int(m.group(2)), f"{m.group(1)[:90]}  {m.group(3)[:60]}"))
    sizes.sort(reverse=True)
    return sizes[:n]


if __name__ == "__main__":
    main(sys.argv[1:])
