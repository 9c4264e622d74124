"""Compiled peak memory of an OPRD step vs an OPD step (issue 20's "−54%" claim, on our step).

    python bench/onpolicy_memory.py --batch 64 --set data.micro_batches=4   # gemma3-270m / gemma3-1b, CPU
    python bench/onpolicy_memory.py --batch 256 --set data.micro_batches=4 --topology v5e:2x2  # TPU compiler
    python bench/onpolicy_memory.py --student tiny --teacher tiny-7 --vocab 32000 --batch 8 \
        --seq 128 --config tiny                                      # seconds (the test's shape)

For each vocabulary and teacher signal (a live teacher, `teacher.checkpoint`;
or the stored one: `token_logprob` for OPD, `hidden/<l>` for OPRD), the
trainer's own step (`loop.PhaseRunner(...).step`, the live teacher's params
an argument of it) is lowered on abstract arguments and compiled: nothing
is allocated and no weight is read (the live teacher is a checkpoint
directory holding only its config.json; as the trainer loads it, it holds
only the blocks its phase reads, `live_teacher.blocks_needed`: OPRD without
a logit term keeps the teacher's first `teacher.hidden_layer` blocks).
`compiled.memory_analysis()` gives
per-device arguments, temporaries, outputs and the donated outputs that
alias the arguments; peak = args + temp + out − alias, as in
`trainer.plan.compile`. Three methods per signal:

- ``opd``: reverse KL on completion tokens (full vocabulary with a live
  teacher; the single-sample estimator on the stored `token_logprob`);
- ``oprd``: normalized MSE of the projected student layer l_S against the
  teacher's layer (`teacher.hidden_layer`, its middle block), which runs the
  student's first l_S blocks only and never builds a logit;
- ``oprd+opd``: both (`onpolicy.opd_weight=1`).

Issue 20's target (a benchmark, not a timed test): an OPRD step's peak
≤ 0.6 × the OPD step's at V ≥ 32k, same signal. `--top N` adds the N
largest temporaries of each compile's buffer assignment (XLA's dump):
what the bytes are. A step over the chip's memory is a row with the
compiler's refusal and the temporaries it named (peak 0). JSON goes to bench/results/onpolicy_memory_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, overrides): the methods compared (module docstring).
METHODS = (
    ("opd", ("method=opd",)),
    ("oprd", ("method=oprd", "onpolicy.opd_weight=0.0")),
    ("oprd+opd", ("method=oprd", "onpolicy.opd_weight=1.0")),
)
SIGNALS = ("live", "stored")
TARGET_RATIO = 0.6  # Issue 20: OPRD peak <= 0.6 x OPD's at V >= 32k.


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="gemma3_270m", help="trainer config (the method is set)")
    p.add_argument("--student", default="gemma3-270m", help="student model registry name")
    p.add_argument("--teacher", default="gemma3-1b", help="live teacher model registry name")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 262144])
    p.add_argument("--batch", type=int, default=16, help="rows per step (global)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=SIGNALS)
    p.add_argument(
        "--methods", nargs="+", default=[m for m, _ in METHODS], choices=[m for m, _ in METHODS]
    )
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--host-devices", type=int, default=1, help="CPU devices (the mesh)")
    p.add_argument("--topology", default="", help="compile for TPU instead, e.g. v5e:2x2 (libtpu)")
    p.add_argument("--top", type=int, default=0, help="N largest temporaries per compile")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p.parse_args(argv)


def write_config_only_checkpoint(path: str, cfg) -> str:
    """A model checkpoint directory holding only its config: enough to lower a live-teacher
    step on abstract params (`live_teacher.abstract`), never to load one."""
    from trainer.model import layout

    os.makedirs(os.path.join(path, layout.PARAMS_DIR), exist_ok=True)
    with open(os.path.join(path, layout.CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(cfg.to_dict(), f)
    with open(os.path.join(path, layout.METADATA_FILE), "w", encoding="utf-8") as f:
        f.write("{}")
    return path


def case_overrides(args, method: str, signal: str, vocab: int, teacher_cfg, teacher_dir: str):
    """The --set list of one compile (trainer config fields)."""
    sets = [
        "store.url=unused",
        "run_dir=unused",
        f"model.name={args.student}",
        f"model.vocab_size={vocab}",
        f"data.batch_size={args.batch}",
        f"data.seq_len={args.seq}",
        f"teacher.d_model={teacher_cfg.d_model}",
        f"teacher.hidden_layer={teacher_cfg.num_layers // 2}",
        "budget.unit=flops",
        "budget.value=1e30",  # Steps are irrelevant to one compile; any valid schedule.
        *dict(METHODS)[method],
        *args.set,
    ]
    if signal == "live":
        sets.append(f"teacher.checkpoint={teacher_dir}")
    return sets


def rollout_schema(config):
    """The exact-profile rollout store the step reads: loss_mask, token_logprob, one hidden layer."""
    from store import StoreSchema

    return StoreSchema(
        seq_len=config.data.seq_len,
        k=config.data.k,
        vocab_size=config.model.vocab_size,
        hidden_layers=(config.teacher.hidden_layer,),
        hidden_dim=config.teacher.d_model,
        profile="exact",
        loss_mask=True,
        token_logprob=True,
    )


def abstract_batch(config, runner, mesh) -> dict:
    """ShapeDtypeStructs of the rollout-store arrays the phase reads, as the loader ships them."""
    import jax
    import jax.numpy as jnp

    from store import profiles
    from trainer.training import sharding

    arrays = profiles.get_profile("exact").field_arrays(rollout_schema(config), normalized=True)
    specs = {a.name: a for field_arrays in arrays.values() for a in field_arrays}
    out = {}
    for name in runner.batch_keys:
        shape = (config.data.batch_size, *specs[name].inner_shape)
        out[name] = jax.ShapeDtypeStruct(
            shape, jnp.dtype(specs[name].dtype), sharding=sharding.batch_sharding(mesh, len(shape))
        )
    return out


def compile_case(sets, config_name: str, devices, dump_dir: str = ""):
    """Lowers and compiles one on-policy step; (CompileResult, {batch key: shape}).

    `dump_dir`: keep XLA's dump of this compile there (its buffer assignment).
    """
    import time

    import jax

    from store import profiles
    from trainer.plan import compile as plan_compile
    from trainer.training import config as config_lib
    from trainer.training import decode, live_teacher, loop, methods, sharding

    config = config_lib.load_config(config_name, sets)
    model_cfg = loop.model_config_from(config)
    (phase,) = methods.phases(config, model_cfg.num_layers)
    plan = loop.PhasePlan(phase=phase, num_steps=10_000, flops_per_token=1.0)
    mesh = sharding.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices
    )
    # As the trainer loads it: only the blocks its phases read (live_teacher.blocks_needed).
    blocks = live_teacher.blocks_needed([phase])
    teacher = live_teacher.abstract(config, mesh, blocks) if phase.live else None
    schema = rollout_schema(config)
    encoding = decode.Encoding.from_schema(schema, profiles.get_profile("exact").encodings(schema))
    runner = loop.PhaseRunner(config, model_cfg, plan, mesh, encoding, teacher)
    batch = abstract_batch(config, runner, mesh)
    start = time.perf_counter()
    lowered = runner.step.lower(runner.abstract_state, batch)
    options = {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True} if dump_dir else None
    try:
        mem = lowered.compile(compiler_options=options).memory_analysis()
    except jax.errors.JaxRuntimeError as err:
        if not plan_compile.is_out_of_memory(err):
            raise
        # Over the chip's memory: the compiler names the bytes it needed (trainer.plan does too).
        result = plan_compile.CompileResult(
            compile_s=time.perf_counter() - start,
            error=str(err).strip().splitlines()[0][:400],
            error_temp_bytes=plan_compile._named_bytes(str(err)),
        )
        return result, {k: tuple(v.shape) for k, v in batch.items()}
    result = plan_compile.CompileResult(
        argument_bytes=int(mem.argument_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        compile_s=time.perf_counter() - start,
    )
    return result, {k: tuple(v.shape) for k, v in batch.items()}


def top_temporaries(dump_dir: str, n: int):
    """The n largest buffers of the last compiled train step's buffer assignment, MiB."""
    import step_memory

    return [(size / 2**20, desc) for size, desc in step_memory.top_buffers(dump_dir, n)]


def ratio_rows(rows: list[dict]) -> list[dict]:
    """OPRD / OPD and (OPRD+OPD) / OPD peaks per (platform, vocab, signal).

    Args:
        rows: compile rows with platform, vocab, signal, method, peak_bytes.

    Returns:
        one dict per group holding an `opd` row: the ratios, and whether the
        OPRD ratio meets the target (None when V < 32k: the target does not apply).
    """
    groups: dict[tuple, dict[str, int]] = {}
    for r in rows:
        if r.get("error"):  # Did not compile (over the chip's memory): no peak to compare.
            continue
        key = (r["platform"], r["vocab"], r["signal"])
        groups.setdefault(key, {})[r["method"]] = r["peak_bytes"]
    out = []
    for (platform, vocab, signal), peaks in groups.items():
        if not peaks.get("opd"):
            continue
        row: dict = {"platform": platform, "vocab": vocab, "signal": signal}
        for method in ("oprd", "oprd+opd"):
            if method in peaks:
                row[f"{method}/opd"] = peaks[method] / peaks["opd"]
        if "oprd/opd" in row:
            row["target_met"] = row["oprd/opd"] <= TARGET_RATIO if vocab >= 32000 else None
        out.append(row)
    return out


def format_table(rows: list[dict]) -> str:
    """The compile rows (MiB per device) and the ratios, as printed."""
    mib = 2.0**20
    lines = [
        f"{'platform':10}{'V':>8} {'signal':7}{'method':9}{'args':>10}{'temp':>10}"
        f"{'out-alias':>11}{'peak MiB':>11}{'compile s':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['platform']:10}{r['vocab']:>8} {r['signal']:7}{r['method']:9}"
            f"{r['argument_bytes'] / mib:>10.1f}{r['temp_bytes'] / mib:>10.1f}"
            f"{(r['output_bytes'] - r['alias_bytes']) / mib:>11.1f}"
            f"{r['peak_bytes'] / mib:>11.1f}{r['compile_s']:>10.1f}"
        )
    lines.append(f"ratios (target: oprd/opd <= {TARGET_RATIO} at V >= 32k)")
    for r in ratio_rows(rows):
        met = {True: "met", False: "MISSED", None: "n/a (V < 32k)"}[r.get("target_met")]
        parts = [f"{k} {r[k]:.3f}" for k in ("oprd/opd", "oprd+opd/opd") if k in r]
        lines.append(
            f"  {r['platform']:10}V={r['vocab']:<8} {r['signal']:7}{'  '.join(parts)}  {met}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = _parse(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_force_host_platform_device_count={max(args.host_devices, 1)}"
    dump_root = tempfile.mkdtemp(prefix="onpolicy_memory_dump_") if args.top else ""
    os.environ["XLA_FLAGS"] = flags.strip()
    import jax
    import step_memory

    from trainer.model import model_config

    if args.topology:
        # libtpu's lockfile keeps two processes off one TPU; this one drives none (it
        # only compiles), as trainer.plan.devices says.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        platforms = [(args.topology, step_memory.devices_for(args.topology))]
    else:
        platforms = [("cpu", jax.devices("cpu")[: args.host_devices])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for platform, devices in platforms:
            for vocab in args.vocab:
                teacher_cfg = model_config.get_config(args.teacher, vocab_size=vocab)
                teacher_dir = write_config_only_checkpoint(
                    os.path.join(tmp, f"teacher-{vocab}"), teacher_cfg
                )
                for signal in args.signals:
                    for method in args.methods:
                        sets = case_overrides(args, method, signal, vocab, teacher_cfg, teacher_dir)
                        dump = ""
                        if dump_root:
                            dump = os.path.join(dump_root, f"{platform}-{vocab}-{signal}-{method}")
                        result, batch = compile_case(sets, args.config, devices, dump)
                        row = {
                            "platform": platform,
                            "vocab": vocab,
                            "signal": signal,
                            "method": method,
                            "batch_arrays": batch,
                            **result.to_dict(),
                        }
                        if dump:
                            row["top_temporaries_mib"] = top_temporaries(dump, args.top)
                        rows.append(row)
                        print(format_table([row]).splitlines()[1], flush=True)
    if dump_root:
        shutil.rmtree(dump_root, ignore_errors=True)
    result = {
        "bench": "onpolicy_memory",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_avg_1m": os.getloadavg()[0],
        "jax": jax.__version__,
        "args": vars(args),
        "rows": rows,
        "ratios": ratio_rows(rows),
        "target": f"oprd peak <= {TARGET_RATIO} x opd peak at V >= 32k (same signal)",
    }
    print(format_table(rows))
    for r in rows:
        for size, desc in r.get("top_temporaries_mib", []):
            print(f"  {r['vocab']} {r['signal']} {r['method']}: {size:9.1f} MiB  {desc}")
    os.makedirs(args.out, exist_ok=True)
    platform = (args.topology or "cpu").replace(":", "_")
    path = os.path.join(args.out, f"onpolicy_memory_{platform}_{result['date'][:10]}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"JSON: {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
