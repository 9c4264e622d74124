"""Sweep comparison report: the paper's views from run directories.

    python -m trainer.report RUN_DIR [RUN_DIR ...] --out DIR

Reads RUN_DIR/config.json, metrics.jsonl and eval.json (a directory holding run
directories is expanded) and writes DIR/report.md plus PNGs:

* best setting per method by held-out log-perplexity (mean over seeds), with
  the task errors (the paper's Table 2);
* pointwise improvement over KD at shared settings: KD log-ppl minus the
  method's, for each pair of runs agreeing on every config field that differs
  between the runs and both methods read: η, τ, α, γ, p1, but also tail, k,
  seed, divergence, α schedule (histograms, Figures 2-4);
* scatter of each method's log-ppl against KD's for those pairs (Figures 5-7);
* training loss against cumulative FLOPs (compute-matched comparison).

Runs are compared only within one (model, budget) group, and scores only on
equal row sets (eval.json records a digest of the rows each score was computed
on, see trainer/training/eval_results.py): a pair scored on different rows gets
no Δ (the table counts it as refused), a run whose held-out score is over other
rows than its method's other runs is not ranked, and a table column whose
scores come from different row sets marks each cell with its set ([A], [B]).

The package: ``rundirs`` (reading run directories into `Run`s; the config
names the report uses), ``compare`` (ranking, KD pairs, Δ only on equal row
sets), ``markdown`` (report.md's tables and notes), ``plots`` (the PNGs) and
`main` here, the CLI (``python -m trainer.report``, ``hd-report``), which
imports the rest only once its arguments are parsed, so ``--help`` and
argument errors are answered before matplotlib or JAX load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; see the package docstring."""
    p = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="*", help="run directories (or directories of them)")
    p.add_argument("--out", required=True, help="output directory for report.md and PNGs")
    args = p.parse_args(argv)
    # Here, not at the top: matplotlib and the trainer's config take seconds to import.
    from trainer.report.markdown import build_report
    from trainer.report.rundirs import ReportError

    try:
        print(build_report(args.run_dirs, args.out))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
