"""``python -m store {inspect,verify,stats,repair,compact} STORE [--json]``.

``stats STORE --alpha A [--tau T] [--tail TAIL]`` also reports the penalty
of the KD objective's optimum (store.objective_penalty).

Exit codes: 0 success (verify: store sound), 1 verify found bad units or
damaged metadata (repair: stopped without deleting, see its line),
2 usage error or unreadable store (one line on stderr, no traceback).
"""

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Light imports only at the top: `--help` and bad flags are answered before TensorStore
# loads (about a second); each command's module is imported when it runs.
from store import errors, objective_penalty
from store.schema import manifest_split

# Command -> "module:function" that runs it.
COMMANDS = {
    "inspect": "store.inspection:inspect_store",
    "verify": "store.verify:verify_store",
    "stats": "store.stats:store_stats",
    "repair": "store.repair:repair_store",
    "compact": "store.writer:compact_store",
}
_HELP = """commands:
  inspect  manifest, arrays, committed units, bytes on disk
  verify   check the metadata against the manifest, then every unit (exit 1 if any metadata file
           differs, or a unit is missing, partial, corrupt or invalid)
  stats    teacher-signal statistics on a row sample (--alpha/--tau/--tail: KD objective penalty)
  repair   rewrite damaged metadata from the manifest; un-commit the units whose own bytes fail their
           commit record, so the same dump command re-writes them (--dry-run: only print the plan)
  compact  write the ledger snapshot (opening then costs O(1) requests instead of O(units))"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m store",
        description="Inspect, verify, profile, repair or compact a teacher-signal store.",
        epilog=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=sorted(COMMANDS), help="what to do (see below)")
    p.add_argument(
        "store",
        help="store path or URL (file://, memory://, gs://, s3://; s3:// takes its endpoint "
        "from AWS_ENDPOINT_URL, credentials/region from the standard AWS variables)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (default: off, a table)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="repair: print what would be done, change nothing (default: off)",
    )
    p.add_argument("--rows", type=int, default=32, help="stats: rows to sample (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="stats: sampling seed (default: 0)")
    p.add_argument(
        "--alpha",
        type=float,
        help="stats: KD weight α, to report the objective penalty (with --tau, --tail)",
    )
    p.add_argument("--tau", type=float, help="stats: KD temperature (default 1)")
    p.add_argument(
        "--tail", choices=objective_penalty.TAILS, help="stats: KD tail mode (default bucket)"
    )
    p.add_argument(
        "--divergence",
        choices=objective_penalty.DIVERGENCES,
        help="stats: KD divergence (default forward_kl)",
    )
    return p


def _command(name: str) -> Callable[..., Any]:
    """The function that runs command `name` (its module imported now)."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "stats":
            loss = _loss_settings(args)
            result = _command("stats")(args.store, sample_rows=args.rows, seed=args.seed, loss=loss)
        elif args.command == "repair":
            result = _command("repair")(args.store, dry_run=args.dry_run)
        else:
            if args.dry_run:
                raise errors.StoreInputError(
                    f"--dry-run is an option of repair, not of {args.command}"
                )
            result = _command(args.command)(args.store)
    except errors.StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True, allow_nan=True))
    else:
        print(_format(args.command, result))
    if args.command == "verify" and not result["ok"]:
        return 1
    if args.command == "repair" and result["status"] == "stopped":
        return 1
    return 0


def _loss_settings(args: argparse.Namespace) -> dict | None:
    """The --alpha/--tau/--tail/--divergence group (None: no penalty asked for)."""
    extra = [f"--{n}" for n in ("tau", "tail", "divergence") if getattr(args, n) is not None]
    if args.alpha is None:
        if extra:
            raise errors.StoreInputError(
                f"{', '.join(extra)} need --alpha (the KD weight) to report the objective penalty"
            )
        return None
    return {
        "alpha": args.alpha,
        "tau": 1.0 if args.tau is None else args.tau,
        "tail": args.tail or "bucket",
        "divergence": args.divergence or "forward_kl",
    }


def _format_repair(r: dict) -> str:
    if r["status"] == "nothing to do":
        return f"nothing to repair in {r['url']} ({r['missing_units']} units missing: the dump writes them)"
    verb = "would" if r["dry_run"] else "did"
    lines = [f"  {verb}: {a}" for a in r["actions"]]
    if r["status"] == "stopped":
        return "\n".join(lines + [f"repair stopped: {r['why']}"])
    if r["status"] == "units not judged":
        return "\n".join(
            [f"dry run of repair on {r['url']}: nothing was changed"] + lines + [r["why"]]
        )
    units = [b["unit"] for b in r["repaired"]]
    snap = (
        "; ledger snapshot re-compacted"
        if any(a.startswith("re-compact") for a in r["actions"])
        else ""
    )
    head = (
        (
            f"un-committed {len(units)} bad units {units[:10]} of {r['url']} and removed their shards{snap}; "
            "re-run the same dump command to re-write them (it skips committed units)"
        )
        if units
        else (f"repaired {r['url']}{snap}: no unit had to be un-committed")
    )
    if r["dry_run"]:
        head = f"dry run of repair on {r['url']}: nothing was changed; " + (
            f"would un-commit {len(units)} bad units {units[:10]}"
            if units
            else "no unit would be un-committed"
        )
    tail = [f"journal: {r['journal']}"] if r["journal"] else []
    return "\n".join([head] + lines + tail)


def _format(command: str, r: dict) -> str:
    if command == "inspect":
        s = r["manifest"]["schema"]
        lines = [
            f"store {r['url']}  profile={s['profile']}  rows={r['num_rows']}  T={s['seq_len']}  "
            f"k={s['k']}  samples={s.get('samples', 0)}  V={s['vocab_size']}  layers={s['hidden_layers']}  "
            f"D={s['hidden_dim']}  split={manifest_split(r['manifest'])}"
            f"  loss_mask={'stored' if s.get('loss_mask') else 'all ones'}"
            f"  token_logprob={'yes' if s.get('token_logprob') else 'no'}",
            f"units committed {r['committed_units']}/{r['num_units']} (rows_per_unit={s['rows_per_unit']}), "
            f"teacher={s['teacher'].get('name')} fingerprint={s['teacher'].get('fingerprint')}",
            f"{'array':28s} {'dtype':8s} {'shape':22s} {'chunk':18s} {'codecs':34s} {'bytes':>12s} {'B/token':>9s}",
        ]
        for a in r["arrays"]:
            bpt = "-" if a["bytes_per_token"] is None else f"{a['bytes_per_token']:.1f}"
            lines.append(
                f"{a['name']:28s} {a['dtype']:8s} {str(a['shape']):22s} {str(a['chunk_shape']):18s} "
                f"{','.join(a['codecs']):34s} {str(a['bytes_on_disk']):>12s} {bpt:>9s}"
            )
        total = "-" if r["bytes_per_token"] is None else f"{r['bytes_per_token']:.1f}"
        lines.append(f"total bytes on disk {r['bytes_on_disk']}  bytes/token {total}")
        return "\n".join(lines)
    if command == "verify":
        head = (
            f"{'OK' if r['ok'] else 'BAD'}: {r['committed_units']}/{r['num_units']} units committed, "
            + (
                f"{len(r['bad_units'])} bad"
                if r["units_checked"]
                else f"units not checked: {len(r['metadata'])} metadata problems"
            )
        )
        lines = [head] + [
            f"  metadata: {m['file']} {m['problem'].split('; ')[0]}" for m in r["metadata"]
        ]
        lines += [
            f"  unit {b['unit']} rows {b['rows'][0]}..{b['rows'][1]}: {b['status']}: {b['detail']}"
            for b in r["bad_units"]
        ]
        if r["ledger_snapshot"]:
            lines.append(f"  {r['ledger_snapshot']}")
        if r["metadata"]:
            lines.append(
                f"fix: python -m store repair {r['url']}  (it rewrites the metadata from the manifest, "
                "then judges the units; no data is lost)"
            )
        elif any(b["status"] != "missing" for b in r["bad_units"]) or r["ledger_snapshot"]:
            lines.append(
                f"fix: python -m store repair {r['url']}  then re-run the same dump command "
                "(it re-writes the un-committed units)"
            )
        elif r["bad_units"]:
            lines.append("fix: re-run the same dump command (it writes the missing units)")
        return "\n".join(lines)
    if command == "repair":
        return _format_repair(r)
    if command == "compact":
        return (
            f"ledger snapshot written: {r['units']} committed units in {r['runs']} runs, "
            f"{r['tombstones_cleared']} tombstones cleared"
        )
    lines = [f"stats over {r['rows_sampled']} rows ({r['tokens_sampled']} tokens) of {r['url']}"]
    if "topk" in r:
        c, e = r["topk"]["coverage"], r["topk"]["entropy_nats"]
        if c.get("n"):
            lines.append(
                f"top-{r['topk']['k']} mass coverage: mean {c['mean']:.4f} p1 {c['p1']:.4f} "
                f"p50 {c['p50']:.4f} p99 {c['p99']:.4f}"
            )
            lines.append(
                f"entropy over support (nats): mean {e['mean']:.3f} p1 {e['p1']:.3f} "
                f"p50 {e['p50']:.3f} p99 {e['p99']:.3f}"
            )
    if "sampled" in r and r["sampled"]["distinct_ids"].get("n"):
        d, m = r["sampled"]["distinct_ids"], r["sampled"]["mass_of_drawn_ids"]
        lines.append(
            f"{r['sampled']['samples']} draws: distinct ids mean {d['mean']:.2f} p1 {d['p1']:.0f} "
            f"p99 {d['p99']:.0f}; teacher mass of the drawn ids mean {m['mean']:.4f} p1 {m['p1']:.4f}"
        )
    if "loss_mask" in r and r["loss_mask"]["completion_fraction"] is not None:
        lines.append(f"loss_mask: completion tokens {r['loss_mask']['completion_fraction']:.4f}")
    for which, t in r.get("token_logprob", {}).items():
        if t.get("n"):
            lines.append(
                f"token_logprob ({which} positions): mean {t['mean']:.4f} p1 {t['p1']:.4f} "
                f"p50 {t['p50']:.4f} (teacher NLL {-t['mean']:.4f} nats/token)"
            )
    if "objective_penalty" in r:
        lines.append(objective_penalty.describe(r["objective_penalty"]))
    for layer, h in r["hidden"].items():
        if h.get("n") == 0:
            continue
        n = h["token_l2_norm"]
        top = ", ".join(f"{c['channel']}:{c['mean_abs']:.3g}" for c in h["top_channels"])
        lines.append(
            f"hidden/{layer}: token L2 norm mean {n['mean']:.4g} p1 {n['p1']:.4g} p99 {n['p99']:.4g}; "
            f"mean square {h['mean_square']:.4g}; top channels (mean |x|) {top}; "
            f"median channel {h['median_channel_mean_abs']:.3g}"
        )
    return "\n".join(lines)
