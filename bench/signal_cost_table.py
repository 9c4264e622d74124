"""The teacher signal's cost in one table: loader read, write, extraction (issue 12's goals).

Reads the JSON the three benches just wrote (run by `make bench` before this
one) and prints one row per goal, with the figure each bench measured, the
baseline it replaces and the goal. Nothing is measured here: every number is
the named bench's own, from the same `make bench` run.

    python bench/signal_cost_table.py [--results bench/results]

Rows:
  * compact loader-style read vs the raw sequential read of the same files
    (bench/loader_bench.py: the trainer's loader ships the stored arrays,
    the step decodes them on device);
  * compact write (encode + write) vs the exact profile's write, with the
    encode on the device, next unit overlapped (bench/encode_bench.py);
  * extraction end-to-end vs the bare forward, and vs extraction on device
    (bench/extract_bench.py, its first top-k variant).
Writes bench/results/signal_cost_table.json.
"""

import argparse
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The figures these replace, measured 2026-12-01 with `make bench` on the
# 2-core CPU machine before the device codecs existed (issue 12's table).
BASELINE = {
    "loader": "64,891 tok/s, 0.02x raw",
    "write": "23,352 vs exact 28,389 tok/s (0.82x)",
    "extract": "41% (forward 12,510, on device 5,975 tok/s)",
}
GOAL = {"loader": ">= 0.7x raw", "write": ">= 1.0x exact", "extract": ">= 80% of forward"}


def _load(results, name):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} is missing; run `make bench` (it writes it) first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build(results: str) -> list[dict]:
    """One dict per goal: {"what", "now", "baseline", "goal", "met", "source"}."""
    loader = {p["case"]: p for p in _load(results, "loader_bench.json")["profiles"]}
    enc = _load(results, "encode_bench.json")
    ext = _load(results, "extract_bench.json")
    c = loader["compact"]
    write_ratio = enc["vs_exact_host"]["compact_device_overlapped"]
    e2e, on_dev = ext["e2e_over_forward"], ext["e2e_over_extract_device"]
    return [
        {
            "what": "compact loader read",
            "source": "loader_bench.py",
            "now": f"{c['loader_tokens_s']:,.0f} tok/s, {c['loader_vs_raw']:.2f}x raw",
            "baseline": BASELINE["loader"],
            "goal": GOAL["loader"],
            "met": c["loader_vs_raw"] >= 0.7,
        },
        {
            "what": "compact write (encode on device + write)",
            "source": "encode_bench.py",
            "now": (
                f"{enc['modes']['compact_device_overlapped']['tokens_s']:,.0f} vs exact "
                f"{enc['modes']['exact_host']['tokens_s']:,.0f} tok/s ({write_ratio:.2f}x); host encode "
                f"{enc['vs_exact_host']['compact_host']:.2f}x; encoded write alone "
                f"{enc['vs_exact_host']['compact_encoded_write']:.2f}x"
            ),
            "baseline": BASELINE["write"],
            "goal": GOAL["write"],
            "met": write_ratio >= 1.0,
        },
        {
            "what": "extraction end-to-end vs bare forward",
            "source": "extract_bench.py",
            "now": f"{e2e:.0%} of forward ({on_dev:.0%} of extraction on device)",
            "baseline": BASELINE["extract"],
            "goal": GOAL["extract"],
            "met": e2e >= 0.8,
        },
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=RESULTS, help="folder of the benches' JSON")
    args = p.parse_args(argv)
    rows = build(args.results)
    print("| measured | now | before | goal | met |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} ({r['source']}) | {r['now']} | {r['baseline']} | {r['goal']} | "
            f"{'yes' if r['met'] else 'no'} |"
        )
    with open(os.path.join(args.results, "signal_cost_table.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
