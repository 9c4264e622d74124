"""Run metrics: RUN_DIR/metrics.jsonl, TensorBoard event files, a progress line.

One object per logged step in metrics.jsonl (what evaluation and report read);
the same scalars go to RUN_DIR/tb via tensorboardX. Only process 0 writes (the
training loop says which process it is: this module reads metrics without JAX,
for trainer.report and trainer.sweep).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time


def _summary_writer_class():
    """tensorboardX.SummaryWriter without its optional torch import.

    tensorboardX imports torch (~6 s) whenever it is installed, only to accept
    torch tensors; we log Python floats. Hiding torch during that one import
    keeps every trainer process (sweeps start many) from paying for it.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # Makes `import torch` raise ImportError.
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def mfu(
    flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float, num_devices: int
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the mesh's peak FLOP/s."""
    return flops_per_token * tokens_per_s / (peak_flops_per_device * num_devices)


def format_eta(seconds: float) -> str:
    """H:MM:SS (or '?' before the rate is known)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
    """Appends metrics to JSONL + TensorBoard and prints a progress line.

    A resumed run re-runs the steps after its last checkpoint; the rows (and
    TensorBoard events) an earlier process logged past `resume_step` are dropped
    first, so every step appears once.

    Args:
        run_dir: the run directory (metrics.jsonl and tb/ go there).
        enabled: whether this process writes (process 0 of a multi-host run).
        total_steps: steps of the whole run (all phases), for the ETA.
        stream: where the progress line goes (stderr by default).
        resume_step: the global step training continues from (0: a fresh run).
        num_phases: phases of the method; the progress line names the phase
            only when there are several (HLDF).
    """

    def __init__(
        self,
        run_dir: str,
        total_steps: int,
        *,
        enabled: bool,
        stream=None,
        resume_step: int = 0,
        num_phases: int = 1,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.num_phases = num_phases
        self.stream = stream if stream is not None else sys.stderr
        self._start_time = None
        self._start_step = None
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if self.enabled:
            os.makedirs(run_dir, exist_ok=True)
            truncate_metrics(self.path, resume_step)
            self._jsonl = open(self.path, "a", encoding="utf-8")
            self._tb = _summary_writer_class()(
                os.path.join(run_dir, "tb"), purge_step=resume_step + 1
            )

    def write(self, step: int, scalars: dict) -> None:
        """Logs one step's scalars (plain floats/ints; `phase` is kept as an int)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._start_time is None:
            self._start_time, self._start_step = now, step
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, global_step=int(step))
        done = step - self._start_step
        rate = done / (now - self._start_time) if done > 0 else float("nan")
        eta = format_eta((self.total_steps - step) / rate) if done > 0 else "?"
        parts = [f"step {step}/{self.total_steps}"]
        if self.num_phases > 1:
            parts.append(f"phase {record.get('phase', 1)}/{self.num_phases}")
        parts.append(f"loss {record.get('loss', float('nan')):.4f}")
        if "tokens_per_s" in record:
            parts.append(f"{record['tokens_per_s']:.4g} tok/s")
        if "mfu" in record:
            parts.append(f"MFU {100 * record['mfu']:.1f}%")
        parts.append(f"ETA {eta}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        """Flushes and closes the files."""
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _plain(value):
    if isinstance(value, (bool, int, str)):
        return value
    return float(value)


def truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the rows of `path` with step <= last_step (and drops a torn last line).

    Rewritten through a temporary file and an atomic rename: a kill during the
    rewrite leaves the old file, never a half one.
    """
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(record.get("step", 0)) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if not dropped:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl as a list, one record per step (a resumed run's re-logged
    steps replace the earlier ones, so the list is the run's loss curve).

    A line cut short by a killed process is skipped: the resumed run logs
    that step again.
    """
    by_step = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
