"""SIGINT/SIGTERM during training: finish the step, checkpoint, stop with one line.

    stop = StopOnSignal(resume_step).install()
    ... after each step: if stop.requested(): save a checkpoint, raise TrainingInterrupted
    stop.uninstall()

The handler itself only records the signal (no I/O inside a signal handler);
the step loop acts on it where the state is consistent. In a multi-process run
a scheduler or user often signals one process only: `requested` is then a
collective of one int per process, so all of them stop at the same step,
checkpoint it together and print the same line (one process alone would wait
forever in the checkpoint's barriers while the others kept stepping).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run; `str()` says where it resumes. Not a ValueError:
    the run was fine, the user stopped it (`python -m trainer` exits 128 + signum)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a request the step loop honours at the next step.

    The loop then saves a checkpoint and raises TrainingInterrupted. A second
    signal (e.g. during a long compile) raises it at once, naming the step the
    last checkpoint holds (multi-process: that process alone exits; the others
    abort after `distributed_heartbeat_s`). Handlers are installed only in the main thread (the
    only place Python allows it) and restored by `uninstall`.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, resume_step: int):
        self.signum = None
        self.resume_step = resume_step  # The step the newest checkpoint holds.
        self._old = {}

    def install(self) -> StopOnSignal:
        """Installs the handlers (main thread only); returns self."""
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def uninstall(self) -> None:
        """Restores the previous handlers."""
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:
            raise TrainingInterrupted(
                f"{signal.Signals(signum).name} again before a checkpoint was written; re-run "
                f"the same command to resume from step {self.resume_step}",
                signum,
            )
        self.signum = signum

    def requested(self) -> bool:
        """Whether to stop now; in a multi-process run, whether ANY process was asked.

        Multi-process: a collective every process must call at the same steps
        (the loop calls it at logged steps, where it already waits for the
        step). The decision and `signum` come from the gathered flags alone,
        so every process stops at the same step and names the same signal; a
        signal landing after this process shared its flag is shared next time.
        One process: no collective.
        """
        if jax.process_count() == 1:
            return self.signum is not None
        flag = self.signum or 0  # Read once: what the others see is what decides.
        agreed = int(np.max(multihost_utils.process_allgather(np.int32(flag))))
        if agreed:
            self.signum = agreed
        return bool(agreed)
