"""SIGINT/SIGTERM during training: finish the step, checkpoint, stop with one line.

    stop = StopOnSignal(resume_step).install()
    ... after each step: if stop.requested(): save a checkpoint, raise TrainingInterrupted
    stop.uninstall()

The handler itself only records the signal (no I/O inside a signal handler);
the step loop acts on it where the state is consistent.
"""
from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
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
    last checkpoint holds. Handlers are installed only in the main thread (the
    only place Python allows it) and restored by `uninstall`.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, resume_step: int):
        self.signum = None
        self.resume_step = resume_step  # The step the newest checkpoint holds.
        self._old = {}

    def install(self) -> "StopOnSignal":
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
                f"the same command to resume from step {self.resume_step}", signum)
        self.signum = signum

    def requested(self) -> bool:
        """Whether to stop now (in a multi-process run: whether any process was asked)."""
        if jax.process_count() == 1:
            return self.signum is not None
        flags = multihost_utils.process_allgather(jnp.int32(self.signum or 0))
        self.signum = self.signum or (int(max(flags)) or None)
        return self.signum is not None
