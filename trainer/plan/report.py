"""One plan: compile a target at the requested batch, judge the fit, search, format.

    result = make_plan(target, topology, devices, platform)
    print(format_text(result))          # or json.dumps(result)

A program fits when the compiler accepted it and its per-device peak
(arguments + temporaries + outputs not aliased to donated arguments) is at
most the device's HBM (the chip's, split over its devices; `hbm_bytes`
overrides it). A target fits when every program (every HLDF phase) does.
When the requested batch does not fit, the largest rows per batch shard that
fit are found by bisection on compiles (`search`); `search_up` also looks
above a batch that fits (doubling, then bisection) up to `max_rows`.
"""

from __future__ import annotations

import time

from trainer.plan import advice as advice_lib
from trainer.plan import compile as compile_lib
from trainer.plan import roofline as roofline_lib
from trainer.plan import search as search_lib
from trainer.plan.chips import GiB, Topology


def _evaluate(target, rows: int, capacity: int) -> tuple[bool, list[dict]]:
    programs = []
    for program in target.programs(rows):
        result = compile_lib.compile_memory(program.jitted, *program.args)
        programs.append(
            {
                "program": program,
                "memory": result,
                "fits": result.compiled and result.peak_bytes <= capacity,
            }
        )
    return all(p["fits"] for p in programs), programs


def _peak(programs) -> int | None:
    peaks = [
        p["memory"].peak_bytes if p["memory"].compiled else p["memory"].error_temp_bytes
        for p in programs
    ]
    return max(peaks) if all(peaks) else None


def make_plan(
    target,
    topology: Topology,
    devices,
    platform: str,
    hbm_bytes: int | None = None,
    search: bool = True,
    search_up: bool = False,
    max_rows: int = 1024,
) -> dict:
    """Compiles `target` at its requested rows per batch shard and reports the fit.

    Args:
        target: a `targets.TrainTarget` or `targets.DumpTarget`.
        topology: the parsed topology.
        devices: its devices (what `target` was built on).
        platform: "tpu" or "cpu" (whose compiler the bytes are from).
        hbm_bytes: HBM per chip to plan against (default: the chip table's).
        search: find the largest fitting rows when the requested rows do not fit.
        search_up: also search above requested rows that fit (up to max_rows).
        max_rows: the upward search's limit.

    Returns:
        The JSON-ready plan (see the CLI's --json).
    """
    start = time.perf_counter()
    chip = topology.chip
    per_chip = len(devices) // topology.num_chips if platform == "tpu" else 1
    per_chip = max(per_chip, 1)
    capacity = (hbm_bytes or chip.hbm_bytes) // per_chip
    rows = target.requested_rows
    fits, programs = _evaluate(target, rows, capacity)
    probes = [{"rows": rows, "fits": fits, "peak_bytes": _peak(programs)}]

    # The search counts in steps of `row_step` rows (a train target's micro-batches:
    # the trainer refuses rows per shard they do not divide).
    step = getattr(target, "row_step", 1)

    def probe(units):
        ok, progs = _evaluate(target, units * step, capacity)
        return ok, _peak(progs)

    def in_rows(found, more):
        probes.extend({**p, "rows": p["rows"] * step} for p in more)
        return found * step

    largest = rows if fits else None
    if not fits and search:
        largest = in_rows(
            *search_lib.largest_fitting(probe, rows // step, capacity, _peak(programs))
        )
    elif fits and search_up:
        lo, lo_peak, hi, hi_peak = rows // step, _peak(programs), None, None
        while hi is None and lo * 2 * step <= max_rows:
            ok, peak = probe(lo * 2)
            probes.append({"rows": lo * 2 * step, "fits": ok, "peak_bytes": peak})
            if ok:
                lo, lo_peak = lo * 2, peak
            else:
                hi, hi_peak = lo * 2, peak
        largest = lo * step
        if hi is not None:
            largest = in_rows(
                *search_lib.largest_fitting(probe, hi, capacity, hi_peak, lo, lo_peak)
            )
    out_programs = []
    for p in programs:
        prog, mem = p["program"], p["memory"]
        moved = mem.argument_bytes + mem.output_bytes if mem.compiled else None
        roof = None
        if moved is not None:
            roof = roofline_lib.roofline(
                prog.flops_per_token * prog.tokens_per_step,
                prog.tokens_per_step,
                moved,
                len(devices),
                chip.peak_bf16_flops / per_chip,
                chip.hbm_bytes_per_s / per_chip,
            )
        out_programs.append(
            {
                "name": prog.name,
                "fits": p["fits"],
                "memory": mem.to_dict(),
                "tokens_per_step": prog.tokens_per_step,
                "flops_per_token": prog.flops_per_token,
                "roofline": roof,
            }
        )
    result = {
        "target": target.kind,
        **target.describe(),
        "topology": topology.name,
        "platform": platform,
        "chip": {
            "name": chip.name,
            "hbm_bytes": chip.hbm_bytes,
            "peak_bf16_flops": chip.peak_bf16_flops,
            "hbm_bytes_per_s": chip.hbm_bytes_per_s,
            "source": chip.source,
        },
        "num_chips": topology.num_chips,
        "num_devices": len(devices),
        "hbm_bytes_per_device": capacity,
        "rows_per_shard": rows,
        "row_step": step,
        "batch_shards": target.shards,
        "param_bytes": target.param_bytes(),
        "fits": fits,
        "largest_fitting_rows": largest,
        "programs": out_programs,
        "probes": probes,
        "compile_s": sum(p["memory"].compile_s for p in programs),
        "wall_s": time.perf_counter() - start,
    }
    result["advice"] = advice_lib.advice(result)
    return result


def _gib(n) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 4 else f"{n / 2**20:.2f} MiB"


def format_text(r: dict) -> str:
    """The human-readable plan."""
    chip = r["chip"]
    lines = [
        f"{r['config']} on {r['topology']} ({r['num_chips']} chips, {r['num_devices']} devices; "
        f"{r['platform']} compiler), {r['rows_per_shard']} rows per shard x {r['batch_shards']} shards",
        f"HBM per device {_gib(r['hbm_bytes_per_device'])}; chip {chip['name']}: "
        f"{chip['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16, {chip['hbm_bytes_per_s'] / 1e9:.0f} GB/s "
        f"({chip['source']})",
        f"parameters {_gib(r['param_bytes'])} in all",
    ]
    live = r.get("live_teacher")
    if live:
        lines.append(
            f"live teacher {live['model']} ({live['source']}): parameters "
            f"{_gib(live['param_bytes'])} in all (fp32, sharded like the student's)"
        )
    for p in r["programs"]:
        m = p["memory"]
        if m["error"]:
            lines.append(
                f"  {p['name']}: compiler refused ({m['error'][:160]}) after {m['compile_s']:.1f} s"
            )
            continue
        lines.append(
            f"  {p['name']}: args {_gib(m['argument_bytes'])} + temp {_gib(m['temp_bytes'])} + "
            f"out {_gib(m['output_bytes'])} - aliased {_gib(m['alias_bytes'])} = peak "
            f"{_gib(m['peak_bytes'])} per device -> {'fits' if p['fits'] else 'DOES NOT FIT'}; "
            f"compiled in {m['compile_s']:.1f} s"
            + (f"; {m['host_callbacks']} HOST CALLBACKS" if m["host_callbacks"] else "")
        )
        roof = p["roofline"]
        lines.append(
            f"    roofline: step >= {roof['step_s'] * 1e3:.1f} ms ({roof['bound']}-bound), "
            f"<= {roof['tokens_per_s']:,.0f} tokens/s "
            f"({p['flops_per_token'] / 1e9:.2f} GFLOP/token from trainer.flops)"
        )
    if len(r["probes"]) > 1:
        lines.append(
            "  search: "
            + ", ".join(f"{p['rows']}:{'fits' if p['fits'] else 'no'}" for p in r["probes"])
        )
    lines.append(r["advice"])
    return "\n".join(lines)
