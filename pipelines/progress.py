"""A progress line for local runs: committed units, rate and ETA.

Beam's DirectRunner shows no progress of its own, and its metrics are only
readable after the run. The store's ledger is the ground truth of progress
(and survives crashes), so a side thread in the launcher polls it:

    dump: 12/40 units (30.0%) 768 rows | 1.9 units/s 3.9k tok/s | ETA 15s

The rate counts only units committed during this run, so a resumed run does
not report the previous run's work as speed.
"""

import sys
import threading
import time

import store


def _human(x):
    for unit in ("", "k", "M", "G"):
        if abs(x) < 1000:
            return f"{x:.1f}{unit}" if unit else f"{x:.1f}"
        x /= 1000
    return f"{x:.1f}T"


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_progress(label, done, total, new_done, elapsed, tokens_per_unit):
    """One progress line.

    Args:
        label: prefix, e.g. "dump".
        done: committed units now.
        total: units in the store.
        new_done: units committed since this run started.
        elapsed: seconds since the first unit of this run could be observed.
        tokens_per_unit: rows_per_unit * seq_len.

    Returns:
        str
    """
    pct = 100.0 * done / total if total else 100.0
    line = f"{label}: {done}/{total} units ({pct:.1f}%)"
    if new_done > 0 and elapsed > 0:
        rate = new_done / elapsed
        eta = (total - done) / rate
        line += (
            f" | {rate:.2f} units/s {_human(rate * tokens_per_unit)} tok/s | ETA {_duration(eta)}"
        )
    else:
        line += " | waiting for the first unit"
    return line


class ProgressReporter:
    """Polls a store's committed units on a daemon thread and prints progress.

    Use as a context manager around the pipeline run.

    Args:
        url: store URL (may not exist yet; polling waits for it).
        interval: seconds between lines; <= 0 disables the reporter.
        label: line prefix.
        stream: where lines go (stderr by default).
    """

    def __init__(self, url, interval=10.0, label="dump", stream=None):
        self._url = url
        self._interval = interval
        self._label = label
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = None
        self.lines = []

    def _poll(self):
        writer = None
        start_done = start_time = last_done = None
        while not self._stop.wait(self._interval):
            try:
                writer = writer or store.open_writer(self._url)
                done = len(writer.committed_units())
            except store.StoreError:
                continue  # not created yet: the spine is still counting
            now = time.monotonic()
            if start_done is None:
                start_done, start_time = done, now
            elif done == last_done:
                continue  # nothing new: keep the log short
            last_done = done
            schema = writer.schema
            line = format_progress(
                self._label,
                done,
                writer.num_units,
                done - start_done,
                now - start_time,
                schema.rows_per_unit * schema.seq_len,
            )
            self.lines.append(line)
            print(line, file=self._stream, flush=True)

    def __enter__(self):
        if self._interval > 0:
            self._thread = threading.Thread(target=self._poll, name="dump-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return False
