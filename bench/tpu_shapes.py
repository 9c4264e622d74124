"""The mission's TPU shapes through the planner, one subprocess each; resumable; a markdown table.

    python bench/tpu_shapes.py [--group students|dump|live] [--only SUBSTRING] [--timeout 1200]
    python bench/tpu_shapes.py --report-only     # render docs/tpu.md's tables from the results

Each shape is one `python -m trainer.plan ... --json` run in its own process
(bounded by `--timeout`), its JSON written to `--results`/<shape id>.json with
the command, the date and the wall time. A shape whose JSON exists is skipped,
so an interrupted batch resumes where it stopped (`--redo` runs a shape
again). Compiles are minutes each on a small CPU box: run it in the
background under `nice`, one compile at a time.

Shapes, in priority order: (students) gemma3-270m and gemma3-1b × nll / kd /
hldc / hldf at the paper's batch 256 × 2048, the shipped configs as they are,
on v5p:2x2x1, v5e:4x4 and v6e:2x4 (each HLDF phase is its own program in
one plan); (dump) the gemma3-4b teacher's extraction step at V = 262,144 and
32,000, T = 2048, k = 128, exact / compact / lean, with and without 12
sampled draws, 4 rows per chip, on v5e:2x2, v5p:2x2x1 and v6e:2x2; (live)
the live-teacher step (`trainer.plan train --teacher`: the teacher's forward
inside the student's step, abstract teacher params): gemma3-270m with a
gemma3-1b teacher and gemma3-1b with a gemma3-4b teacher, KD on the teacher's
full vocabulary and OPRD, at the students' batch and topologies (the
planner's search runs where a shape does not fit).

`--report-only` renders the results between the markers
`<!-- tpu_shapes:<group>:begin -->` / `end` in docs/tpu.md (`--doc`);
shapes without a result are listed as not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30

STUDENTS = ("gemma3_270m", "gemma3_1b")
METHODS = ("nll", "kd", "hldc", "hldf")
STUDENT_TOPOLOGIES = ("v5p:2x2x1", "v5e:4x4", "v6e:2x4")
DUMP_TOPOLOGIES = ("v5e:2x2", "v5p:2x2x1", "v6e:2x2")
DUMP_VOCABS = (262_144, 32_000)
PROFILES = ("exact", "compact", "lean")
SAMPLES = (0, 12)
DUMP_ROWS_PER_CHIP = 4
# Live teacher pairs: (student config, teacher model, its median layer, its width).
LIVE_PAIRS = (("gemma3_270m", "gemma3-1b", 13, 1152), ("gemma3_1b", "gemma3-4b", 17, 2560))
LIVE_METHODS = ("kd", "oprd")


def student_shapes() -> list[dict]:
    """Shipped student configs at their own batch (256 × 2048), per topology.

    The planner searches for the largest fitting batch only where the shipped
    config does not fit (its default); a fitting shape costs one compile per phase.
    """
    out = []
    for topology in STUDENT_TOPOLOGIES:
        for student in STUDENTS:
            for method in METHODS:
                out.append(
                    {
                        "id": f"train-{student}-{method}-{topology.replace(':', '_')}",
                        "group": "students",
                        "args": ["train", "--config", f"{student}:{method}", "--no-search"],
                        "topology": topology,
                    }
                )
    return out


def dump_shapes() -> list[dict]:
    """The 4B teacher's extraction step; --no-search (the 4B compiles cost the most)."""
    out = []
    for vocab in DUMP_VOCABS:
        for samples in SAMPLES:
            for topology in DUMP_TOPOLOGIES:
                for profile in PROFILES:
                    out.append(
                        {
                            "id": f"dump-4b-v{vocab}-s{samples}-{profile}-"
                            f"{topology.replace(':', '_')}",
                            "group": "dump",
                            "args": [
                                "dump",
                                "--teacher",
                                "gemma3-4b",
                                "--vocab",
                                str(vocab),
                                "--seq-len",
                                "2048",
                                "--k",
                                "128",
                                "--samples",
                                str(samples),
                                "--profile",
                                profile,
                                "--rows-per-device",
                                str(DUMP_ROWS_PER_CHIP),
                                "--no-search",
                            ],
                            "topology": topology,
                        }
                    )
    return out


def live_shapes() -> list[dict]:
    """The live-teacher step: the shipped student configs with `--teacher`, its hidden layer
    and width set for OPRD's hidden term (KD reads the teacher's full-vocabulary logits)."""
    out = []
    for student, teacher, layer, width in LIVE_PAIRS:
        for topology in STUDENT_TOPOLOGIES:
            for method in LIVE_METHODS:
                out.append(
                    {
                        "id": f"live-{student}-{method}-{teacher}-{topology.replace(':', '_')}",
                        "group": "live",
                        "args": [
                            "train",
                            "--config",
                            f"{student}:{method}",
                            "--teacher",
                            teacher,
                            "--set",
                            f"teacher.hidden_layer={layer}",
                            "--set",
                            f"teacher.d_model={width}",
                        ],
                        "topology": topology,
                    }
                )
    return out


def search_shapes(records: dict[str, dict]) -> list[dict]:
    """For each student shape planned not to fit: the same plan with the planner's search
    for the largest fitting batch (in whole micro-batches)."""
    out = []
    for shape in student_shapes():
        rec = records.get(shape["id"])
        if rec and rec["status"] == "ok" and not rec["plan"]["fits"]:
            out.append(
                {
                    **shape,
                    "id": shape["id"] + "-search",
                    "group": "search",
                    "args": [a for a in shape["args"] if a != "--no-search"],
                }
            )
    return out


def all_shapes(records: dict[str, dict] | None = None) -> list[dict]:
    """Every shape, in the tables' order: students, their searches, the dump, live teacher."""
    return student_shapes() + search_shapes(records or {}) + dump_shapes() + live_shapes()


# What to compile first when the batch may be stopped (compiles take minutes each):
# the tightest chips first (16 GiB v5e, 32 GiB v6e; v5p-8 is the configs' stated
# topology, measured when they were shipped), the methods that need the most
# memory first, NLL after every other method; for the dump, the exact profile everywhere before compact / lean
# (whose encodings add little), the full vocabulary first; for the live teacher, the
# small pair first (gemma3-270m with gemma3-1b), the tightest chips first, KD before OPRD.
_TOPOLOGY_ORDER = {"v5e:4x4": 0, "v6e:2x4": 1, "v5p:2x2x1": 2}
_METHOD_ORDER = {"hldc": 0, "kd": 1, "hldf": 2, "nll": 3}
_PROFILE_ORDER = {p: i for i, p in enumerate(PROFILES)}


def _priority(shape: dict) -> tuple:
    group = {"students": 0, "search": 1, "dump": 2, "live": 3}[shape["group"]]
    args = shape["args"]
    if group == 3:
        student, method = args[2].split(":")
        return (group, STUDENTS.index(student), _TOPOLOGY_ORDER[shape["topology"]], method)
    if group < 2:
        student, method = args[2].split(":")
        # NLL last: its step is KD's without the teacher's arrays and KD term (less memory).
        nll = method == "nll"
        return (group, nll, _TOPOLOGY_ORDER[shape["topology"]], student, _METHOD_ORDER[method])
    profile = args[args.index("--profile") + 1]
    return (group, _PROFILE_ORDER[profile], -int(args[args.index("--vocab") + 1]))


def run_order(records: dict[str, dict]) -> list[dict]:
    """Every shape in the order the batch compiles them (stable within equal priority)."""
    return sorted(all_shapes(records), key=_priority)


def command(shape: dict) -> list[str]:
    """The planner command line of a shape (without the interpreter)."""
    return ["-m", "trainer.plan", *shape["args"], "--topology", shape["topology"], "--json"]


def run_shape(shape: dict, results: Path, timeout: float) -> dict:
    """Runs one shape's planner in a subprocess and writes its JSON record."""
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = [sys.executable, *command(shape)]
    record = {
        "id": shape["id"],
        "group": shape["group"],
        "command": "python " + " ".join(command(shape)[:-1]),
        "started": started,
        "load_avg_start": os.getloadavg()[0],
    }
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        record.update(status="timeout", timeout_s=timeout)
    else:
        if proc.returncode == 0:
            record.update(status="ok", plan=json.loads(proc.stdout))
        else:
            record.update(status="error", returncode=proc.returncode, stderr=proc.stderr[-2000:])
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["load_avg_end"] = os.getloadavg()[0]
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{shape['id']}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_results(results: Path) -> dict[str, dict]:
    """Shape id -> its record, for every record in the folder."""
    if not results.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


# ------------------------------------------------------------------ the table


def _g(n) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def _roof(roof) -> str:
    if not roof:
        return "-"
    return f"≥ {roof['step_s'] * 1e3:,.0f} ms, ≤ {roof['tokens_per_s']:,.0f} tok/s"


def _program_cells(plan: dict, prog: dict) -> list[str]:
    m = prog["memory"]
    hbm = plan["hbm_bytes_per_device"]
    if m["error"]:
        refused = m["error_temp_bytes"]
        return [
            "-",
            f"refused ({_g(refused)})" if refused else "refused",
            "-",
            f"over {_g(hbm)}",
            "no",
            f"{m['compile_s']:.0f}",
            "-",
        ]
    return [
        _g(m["argument_bytes"]),
        _g(m["temp_bytes"]),
        _g(m["output_bytes"] - m["alias_bytes"]),
        f"{_g(m['peak_bytes'])} / {_g(hbm)}",
        "yes" if prog["fits"] else "**no**",
        f"{m['compile_s']:.0f}",
        _roof(prog["roofline"]),
    ]


def _mesh(plan: dict) -> str:
    mesh = plan["mesh"]
    return f"{mesh.get('data', 1)}/{mesh.get('fsdp', 1)}/{mesh.get('tensor', 1)}"


def _not_run(shape: dict, record: dict | None) -> str:
    if record is None:
        return "not run"
    if record["status"] == "timeout":
        return f"timed out after {record['timeout_s']:.0f} s"
    last = record.get("stderr", "").strip().splitlines()
    return f"planner error: {last[-1][:200] if last else record.get('returncode')}"


def render_students(shapes: list[dict], records: dict[str, dict]) -> str:
    """The student table: one row per program (HLDF: two phases), advice under misfits."""
    head = (
        "| student, method | topology, mesh d/f/t | batch (per shard) | micro-batches | "
        "remat | program | args GiB | temp GiB | out GiB | peak / HBM GiB | fits | "
        "compile s | roofline |\n" + "|---" * 13 + "|\n"
    )
    rows: list[str] = []
    missing: dict[str, list[str]] = {}
    for shape in shapes:
        rec = records.get(shape["id"])
        label = _train_label(shape)
        if rec is None:
            missing.setdefault(label, []).append(shape["topology"])
            continue
        if rec["status"] != "ok":
            rows.append(
                f"| {label} | {shape['topology']} | 256 | | | | "
                f"{_not_run(shape, rec)} | | | | | | |"
            )
            continue
        plan = rec["plan"]
        for prog in plan["programs"]:
            rows.append(
                "| "
                + " | ".join(
                    [
                        label,
                        f"{plan['topology']}, {_mesh(plan)}",
                        f"{plan['batch_size']} ({plan['rows_per_shard']})",
                        str(plan.get("micro_batches", 1)),
                        str(plan["remat"]),
                        prog["name"],
                        *_program_cells(plan, prog),
                    ]
                )
                + " |"
            )
        if not plan["fits"]:
            found = records.get(shape["id"] + "-search")
            if len(plan["probes"]) > 1:  # The plan searched itself (the live shapes do).
                note = f"{plan['advice']} (search: {_probes(plan)})"
            elif found and found["status"] == "ok":
                note = f"{found['plan']['advice']} (search: {_probes(found['plan'])})"
            else:
                note = plan["advice"] + (
                    f" (search {_not_run(shape, found)})" if found else " (search not run)"
                )
            rows.append(f"| ↳ planner | | | | | | {note} | | | | | | |")
    return _table(head, rows) + _missing(missing)


def _train_label(shape: dict) -> str:
    """ "gemma3-270m kd", or with a live teacher "gemma3-270m kd ← gemma3-1b (live)"."""
    args = shape["args"]
    label = args[2].replace("_", "-").replace(":", " ")
    if "--teacher" in args:
        label += f" ← {args[args.index('--teacher') + 1]} (live)"
    return label


def _table(head: str, rows: list[str]) -> str:
    return head + "\n".join(rows) + "\n" if rows else "No shape planned yet.\n"


def _missing(missing: dict[str, list[str]]) -> str:
    """The shapes without a result, one clause per row label."""
    if not missing:
        return ""
    return "\nNot run: " + "; ".join(f"{k} on {', '.join(v)}" for k, v in missing.items()) + ".\n"


def _probes(plan: dict) -> str:
    return (
        ", ".join(f"{p['rows']} {'fits' if p['fits'] else 'no'}" for p in plan["probes"])
        + f"; {plan['wall_s']:.0f} s"
    )


def render_dump(shapes: list[dict], records: dict[str, dict]) -> str:
    """The 4B dump table: one row per shape."""
    head = (
        "| V | samples | profile | topology | args GiB | temp GiB | out GiB | "
        "peak / HBM GiB | fits | compile s | roofline | args, out vs estimate |\n"
        + "|---" * 12
        + "|\n"
    )
    rows: list[str] = []
    missing: dict[str, list[str]] = {}
    for shape in shapes:
        rec = records.get(shape["id"])
        a = shape["args"]
        vocab, samples, profile = (
            a[a.index("--vocab") + 1],
            a[a.index("--samples") + 1],
            a[a.index("--profile") + 1],
        )
        lead = f"| {int(vocab):,} | {samples} | {profile} | {shape['topology']} | "
        if rec is None:
            key = f"V = {int(vocab):,}, {samples} samples, {profile}"
            missing.setdefault(key, []).append(shape["topology"])
            continue
        if rec["status"] != "ok":
            rows.append(lead + f"{_not_run(shape, rec)} | | | | | | | |")
            continue
        plan = rec["plan"]
        for prog in plan["programs"]:
            rows.append(
                lead + " | ".join(_program_cells(plan, prog)) + f" | {_vs_estimate(plan, prog)} |"
            )
        if not plan["fits"]:
            rows.append(f"| ↳ planner | | | | {plan['advice']} | | | | | | | |")
    return _table(head, rows) + _missing(missing)


def dump_estimate(plan: dict) -> tuple[int, int]:
    """Per-chip bytes of a dump shape from first principles, not from the compiler.

    Arguments: trainer.flops' parameter count × 2 B (bf16) for params replicated on every
    chip, plus the chip's int32 tokens [rows, T] (and int32 draw seeds [rows]). Outputs:
    the chip's rows of every stored array of the profile but tokens (store.profiles' shapes
    and dtypes), or with no device encoding the raw signal is not estimated (0).
    """
    from store import StoreSchema, profiles
    from trainer import flops
    from trainer.model import model_config

    cfg = model_config.get_config(plan["teacher"], vocab_size=plan["vocab_size"])
    rows, T = plan["rows_per_shard"], plan["seq_len"]
    params = flops.param_counts(cfg)["total_params"] * 2
    if plan["params"] == "fsdp":
        params //= plan["num_devices"]
    args = params + rows * T * 4 + (rows * 4 if plan["samples"] else 0)
    if plan["profile"] not in profiles.PROFILES:
        return args, 0
    schema = StoreSchema(
        seq_len=T,
        k=plan["k"],
        vocab_size=plan["vocab_size"],
        hidden_layers=tuple(plan["layers"]),
        hidden_dim=cfg.d_model,
        profile=plan["profile"],
        samples=plan["samples"],
    )
    fields = profiles.get_profile(plan["profile"]).field_arrays(schema)
    out = sum(
        rows * int(np.prod(a.inner_shape)) * np.dtype(a.dtype).itemsize
        for arrays in fields.values()
        for a in arrays
        if a.name != "tokens"
    )
    return args, out


def _vs_estimate(plan: dict, prog: dict) -> str:
    m = prog["memory"]
    if m["error"]:
        return "-"
    args, out = dump_estimate(plan)

    def dev(got, want):
        return f"{100 * (got - want) / want:+.2f}%" if want else "-"

    return f"{dev(m['argument_bytes'], args)}, {dev(m['output_bytes'], out)}"


def _summary(group_shapes: list[dict], records: dict[str, dict]) -> str:
    done = [records[s["id"]] for s in group_shapes if s["id"] in records]
    ok = [r for r in done if r["status"] == "ok"]
    dates = sorted({r["started"][:10] for r in done})
    loads = [r["load_avg_start"] for r in done] + [r["load_avg_end"] for r in done]
    load = f"load average {min(loads):.1f}–{max(loads):.1f}" if loads else "no runs"
    return (
        f"{len(ok)} of {len(group_shapes)} shapes planned ({', '.join(dates) or 'never'}; "
        f"{load} on the 2-core machine that compiled them; `python bench/tpu_shapes.py "
        f"--report-only` renders this table from bench/tpu_shapes_results/).\n\n"
    )


def render_group(group: str, records: dict[str, dict]) -> str:
    """The markdown between a group's markers."""
    shapes = [s for s in all_shapes(records) if s["group"] == group]
    if group == "students":  # Their searches render under them.
        shapes_all = shapes + [s for s in all_shapes(records) if s["group"] == "search"]
        return _summary(shapes_all, records) + render_students(shapes, records)
    if group == "live":
        return _summary(shapes, records) + render_students(shapes, records)
    return _summary(shapes, records) + render_dump(shapes, records)


def splice(text: str, group: str, body: str) -> str:
    """Replaces what is between a group's markers in `text`.

    Raises:
        ValueError: the markers are missing.
    """
    begin, end = f"<!-- tpu_shapes:{group}:begin -->", f"<!-- tpu_shapes:{group}:end -->"
    if begin not in text or end not in text:
        raise ValueError(f"markers {begin} ... {end} not found: add them where the table goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "bench/tpu_shapes_results")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/tpu.md")
    p.add_argument("--group", choices=("students", "search", "dump", "live"), default=None)
    p.add_argument("--only", default="", help="run the shapes whose id contains this")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per shape")
    p.add_argument("--redo", action="store_true", help="run shapes that already have a result")
    p.add_argument("--report-only", action="store_true", help="render docs/tpu.md's tables")
    args = p.parse_args(argv)
    if args.report_only:
        records = load_results(args.results)
        text = args.doc.read_text()
        for group in ("students", "dump", "live"):
            text = splice(text, group, render_group(group, records))
        args.doc.write_text(text)
        print(f"rendered {len(records)} results into {args.doc}")
        return 0
    ran: set[str] = set()
    while True:
        records = load_results(args.results)
        todo = [
            s
            for s in run_order(records)
            if (args.group is None or s["group"] == args.group)
            and args.only in s["id"]
            and s["id"] not in ran
            and (args.redo or s["id"] not in records)
        ]
        if not todo:
            break
        shape = todo[0]
        ran.add(shape["id"])
        rec = run_shape(shape, args.results, args.timeout)
        fits = rec.get("plan", {}).get("fits")
        print(
            f"{shape['id']}: {rec['status']} fits={fits} {rec['wall_s']:.0f} s "
            f"load {rec['load_avg_end']:.1f} ({len(todo) - 1} left)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
