"""`make demo`: the whole chain on real text, stage by stage, resumable.

    python -m scripts.demo [--size cpu|ci|gpu] [--out demo_out] [--redo STAGE]

Stages (each runs the same command a user would type, logs to
OUT/logs/<stage>.log, and leaves OUT/.done/<stage> when it succeeded, so a
rerun skips finished stages):

  corpus     Wikipedia lead paragraphs → train / held-out JSONL (by doc hash)
  tokenizer  python -m pipelines.train_tokenizer (SentencePiece unigram)
  spine      python -m pipelines.dump without a teacher → tokens-only stores
  teacher    python -m trainer (NLL pre-training of the teacher)
  dump       python -m pipelines.dump with the teacher → teacher-signal store
  inspect    python -m store inspect / verify
  students   python -m trainer, NLL / KD from 12 sampled logits / KD from top-k (2 seeds
             each) / HLDC / HLDF at one FLOPs budget
  evaluate   python -m trainer.evaluate (held-out log-ppl on every row, downstream tasks)
  report     python -m trainer.report + OUT/report.md + OUT/results.json

`make demo DEMO_ARGS="--size gpu"` passes the flags through.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from scripts import demo_stages
from scripts.demo_sizes import get_size


class StageFailed(RuntimeError):
    """A stage's command failed; the message says which and how to resume."""


def write_marker(path: str, seconds: float) -> None:
    """OUT/.done/<stage>: the stage's wall time and the machine's load when it ended.

    The report reads these (demo_results.read_marker), so a resumed demo still
    reports every stage's time; the load says how shared the machine was.
    """
    marker = {
        "wall_s": round(seconds, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(marker, f)


def run_demo(
    size_name: str, out_dir: str, redo: str | None = None, until: str | None = None
) -> str:
    """Runs (or resumes) every stage, or the stages up to `until`; returns the path of report.md.

    `until` (a stage name) stops after that stage: bench/profile_quality.py reuses the
    corpus → teacher chain (and its cache in OUT) this way; report.md then does not exist.
    """
    size = get_size(size_name)
    ctx = demo_stages.Context(size=size, out=os.path.abspath(out_dir))
    os.makedirs(os.path.join(ctx.out, ".done"), exist_ok=True)
    names = [name for name, _ in demo_stages.STAGES]
    if redo is not None and redo not in names:
        raise ValueError(f"--redo {redo!r} is not a stage; use one of {names}")
    if until is not None and until not in names:
        raise ValueError(f"until={until!r} is not a stage; use one of {names}")
    stages = demo_stages.STAGES[: names.index(until) + 1] if until else demo_stages.STAGES
    start = time.time()
    for i, (name, fn) in enumerate(stages, 1):
        marker = os.path.join(ctx.out, ".done", name)
        if redo is not None and names.index(name) >= names.index(redo) and os.path.exists(marker):
            os.remove(marker)
        if os.path.exists(marker):
            print(f"[demo {i}/{len(names)}] {name}: done earlier, skipped", flush=True)
            continue
        print(f"[demo {i}/{len(names)}] {name} ({time.time() - start:.0f}s elapsed)", flush=True)
        t0 = time.time()
        try:
            fn(ctx)
        except demo_stages.CommandFailed as e:
            raise StageFailed(
                f"stage {name!r} failed: {e}; fix it, then rerun `make demo` "
                f"(finished stages are skipped)"
            ) from None
        write_marker(marker, time.time() - t0)
    if until:
        print(f"[demo] stopped after {until} ({time.time() - start:.0f}s)", flush=True)
        return ctx.report_path
    print(f"[demo] finished in {time.time() - start:.0f}s; report: {ctx.report_path}", flush=True)
    return ctx.report_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", default="cpu", help="cpu | ci | gpu (scripts/demo_sizes.py)")
    p.add_argument("--out", default="demo_out", help="output directory (resumable)")
    p.add_argument("--redo", help="rerun from this stage on, even if finished")
    args = p.parse_args(argv)
    try:
        run_demo(args.size, args.out, args.redo)
    except (StageFailed, ValueError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
