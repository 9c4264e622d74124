"""`python -m trainer.plan {train,dump} ... --topology v5p:2x2x1 [--platform cpu] [--json]`.

    python -m trainer.plan train --config gemma3_270m:kd --set data.micro_batches=8 \\
        --set model.remat=qkv_and_outputs --topology v5p:2x2x1
    python -m trainer.plan train --config gemma3_270m:kd --teacher gemma3-1b \\
        --topology v5e:4x4          # a live teacher: abstract params, nothing loaded
    python -m trainer.plan dump --teacher gemma3-4b --vocab 262144 --profile compact \\
        --rows-per-device 4 --topology v5e:2x2

Compiles the real step for the topology with abstract arrays (nothing is
allocated, no TPU is needed: libtpu's compiler runs on this machine) and
prints per-device bytes against the chip's HBM, whether it fits, the largest
rows per batch shard that fit, the compile time and a roofline lower bound.
`train` takes what `python -m trainer` takes (`--config`, `--set`); its batch
is `data.batch_size` over the mesh's data×fsdp shards. `--teacher MODEL` plans
the step with a live teacher of that registry model (as `teacher.checkpoint`
would, without weights). `dump` takes the
dump's extraction options; its batch is rows per device.

The planner only compiles: it starts JAX on the CPU (JAX_PLATFORMS=cpu unless
set) and, with `--platform cpu`, with one forced host device per chip of the
topology. Bad input (unknown topology, a mesh that does not divide the
devices, libtpu absent) prints one line naming the fix and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from trainer.plan.chips import GiB, PlanInputError, parse_topology


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # One line, exit 2 (argparse's default adds the usage).
        self.exit(2, f"trainer.plan: error: {message}\n")


def _parse_args(argv):
    p = _Parser(
        prog="python -m trainer.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="target", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="the trainer's step of a config")
    train.add_argument(
        "--config", required=True, help="as `python -m trainer --config` (e.g. gemma3_270m:kd)"
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable (any field the config has, e.g. model.remat=full)",
    )
    train.add_argument(
        "--profile",
        default="exact",
        help="store profile the batch arrays come from (default: exact)",
    )
    train.add_argument(
        "--teacher",
        default="",
        metavar="MODEL",
        help="plan a live teacher: this model (e.g. gemma3-1b) at the student's vocabulary and "
        "dtype, abstract params sharded like the student's, no checkpoint (default: none, or "
        "the config's teacher.checkpoint)",
    )
    dump = sub.add_parser("dump", help="the dump's extraction step")
    dump.add_argument(
        "--teacher", default="gemma3-4b", help="teacher model name (default: gemma3-4b)"
    )
    dump.add_argument("--vocab", type=int, default=262_144, help="V (default: 262144)")
    dump.add_argument(
        "--dtype", default="bfloat16", help="teacher compute dtype (default: bfloat16)"
    )
    dump.add_argument("--seq-len", type=int, default=2048, help="T (default: 2048)")
    dump.add_argument("--k", type=int, default=128, help="top-k kept (default: 128)")
    dump.add_argument(
        "--samples", type=int, default=0, help="sampled draws per position (default: 0)"
    )
    dump.add_argument(
        "--layers", default="", help="captured layers, comma-separated (default: L // 2)"
    )
    dump.add_argument(
        "--token-tile", type=int, default=2048, help="tokens per de-embedding tile (default: 2048)"
    )
    dump.add_argument(
        "--profile",
        default="exact",
        help="device encoding into this store profile: exact, compact, lean, or none "
        "(the raw signal goes to the host; default: exact)",
    )
    dump.add_argument(
        "--params",
        default="replicated",
        help="teacher params: replicated (as the dump places them) or fsdp (default: replicated)",
    )
    dump.add_argument(
        "--rows-per-device", type=int, default=4, help="batch rows per device (default: 4)"
    )
    for s in (train, dump):
        s.add_argument(
            "--topology", required=True, help="e.g. v5e:2x2, v5p:2x2x1, v6e:2x4, v4:2x2x1"
        )
        s.add_argument(
            "--platform",
            default="tpu",
            help="tpu: libtpu's compiler (default); cpu: forced host devices (no libtpu)",
        )
        s.add_argument(
            "--hbm-gib",
            type=float,
            default=None,
            help="HBM per chip to plan against (default: the chip's)",
        )
        s.add_argument(
            "--no-search",
            action="store_true",
            help="do not bisect for the largest batch when the requested one does not fit",
        )
        s.add_argument(
            "--search-up",
            action="store_true",
            help="also search above a batch that fits (default: off)",
        )
        s.add_argument(
            "--max-rows",
            type=int,
            default=1024,
            help="upper limit of --search-up, rows per shard (default: 1024)",
        )
        s.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def _start_jax(platform: str, num_chips: int) -> None:
    """Environment for the planner's JAX, set only if JAX has not started yet."""
    if "jax" in sys.modules:
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Nothing runs: only compiles.
    flags = os.environ.get("XLA_FLAGS", "")
    if platform == "cpu" and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={num_chips}".strip()
        )


def _layers(text: str):
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise PlanInputError(
            f"--layers {text!r} is not a comma-separated list of integers; "
            f"pass e.g. --layers 17 or --layers 9,17"
        ) from None


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        topology = parse_topology(args.topology)
        if args.hbm_gib is not None and not args.hbm_gib > 0:
            raise PlanInputError(f"--hbm-gib {args.hbm_gib} must be > 0")
        _start_jax(args.platform, topology.num_chips)
        # Imported here: JAX must see the environment above, and --help stays instant.
        from trainer.plan import devices as devices_lib
        from trainer.plan import report, targets

        devices = devices_lib.plan_devices(topology, args.platform)
        if args.target == "train":
            target: targets.TrainTarget | targets.DumpTarget = targets.TrainTarget(
                args.config, args.set, devices, args.profile, args.teacher
            )
        else:
            if args.rows_per_device < 1:
                raise PlanInputError(f"--rows-per-device {args.rows_per_device} must be >= 1")
            options = targets.DumpOptions(
                teacher=args.teacher,
                vocab_size=args.vocab,
                dtype=args.dtype,
                seq_len=args.seq_len,
                k=args.k,
                samples=args.samples,
                layers=_layers(args.layers),
                token_tile=args.token_tile,
                profile="" if args.profile == "none" else args.profile,
                params=args.params,
            )
            target = targets.DumpTarget(options, devices, args.platform, args.rows_per_device)
        result = report.make_plan(
            target,
            topology,
            devices,
            args.platform,
            hbm_bytes=None if args.hbm_gib is None else int(args.hbm_gib * GiB),
            search=not args.no_search,
            search_up=args.search_up,
            max_rows=args.max_rows,
        )
    except ValueError as err:  # ConfigError / PlanInputError: one line with the fix.
        print(f"trainer.plan: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else report.format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
