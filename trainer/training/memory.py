"""Running out of memory: one line with the step and what to change, not a traceback.

    with memory.on_exhaustion(step, phase):      # around the jitted step
        state, metrics = runner.step(state, batch)

    memory.address_space_warning()               # at start: a low `ulimit -v`

Device memory: XLA reports an allocation it cannot make, at compile time
("HLO temporaries ... exceeds available HBM") or when a step runs, as a
`JaxRuntimeError` whose message starts with RESOURCE_EXHAUSTED. That is turned
(or, read back from a multi-device run, an INTERNAL "Out of memory allocating")
into `DeviceMemoryError` (a ValueError: `python -m trainer` prints one line
and exits 2) naming the step, the phase and the usual cures. Nothing is lost:
the newest checkpoint stays, and re-running resumes from it.

Host address space: under `ulimit -v` (RLIMIT_AS) a C++ allocation inside
XLA fails with `std::bad_alloc` and the process aborts (SIGABRT, exit 134)
without a Python exception to catch. So the limit is checked at start and a
warning is printed when it is below `MIN_ADDRESS_SPACE`, what the tiny config
was measured to need (see that constant); the abort, if it then comes, has a
line before it that explains it.
"""

from __future__ import annotations

import contextlib
import resource

# Measured 2026-12-06 (2-core CPU box, jax 0.10.2, `python -m trainer --config tiny`,
# 3 steps + checkpoint + export): `ulimit -v` 3000000 KiB (2.9 GiB) and above ran;
# 2000000 KiB (1.9 GiB) failed at the first checkpoint ("can't start new thread",
# rc 1); 1000000 KiB aborted with std::bad_alloc (rc 134). XLA reserves address
# space well beyond what it touches (thread stacks, allocator arenas); bigger
# models need more, so this is a floor, with margin, not an estimate for a run.
MIN_ADDRESS_SPACE = 4 * 2**30

HINT = (
    "set model.remat=full (or a lighter policy: docs/memory.md), raise data.micro_batches, "
    "lower data.batch_size or data.seq_len, or spread the batch over more devices"
)


class DeviceMemoryError(ValueError):
    """A step (its compile or its run) needed more device memory than there is."""


def is_resource_exhausted(error: BaseException) -> bool:
    """Whether `error` is XLA's out-of-memory (RESOURCE_EXHAUSTED) runtime error."""
    import jax  # Here: callers that never run JAX keep this module light.

    text = str(error)
    # A failed allocation read back from a multi-device run arrives as "INTERNAL: Error
    # dispatching computation: Out of memory allocating N bytes." (measured, CPU, 8 devices).
    return isinstance(error, jax.errors.JaxRuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    )


def describe(error: BaseException) -> str:
    """XLA's first line, shortened (it can run to pages of buffer listings)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first if len(first) <= 200 else first[:197] + "..."


@contextlib.contextmanager
def on_exhaustion(step: int, phase: int):
    """Turns RESOURCE_EXHAUSTED raised inside into DeviceMemoryError naming `step`/`phase`.

    The first step of a phase also compiles, so an exhaustion there is most
    often the compiler's estimate; later ones are the run's own allocations.
    Steps run asynchronously: an allocation failing while step N runs may
    surface only where its results are read (the loop wraps that read too).
    """
    try:
        yield
    except Exception as e:  # JaxRuntimeError only; everything else re-raised as is.
        if not is_resource_exhausted(e):
            raise
        raise DeviceMemoryError(
            f"out of device memory at step {step} (phase {phase}"
            f"{', its first step: compile or run' if step == 1 else ''}): {describe(e)}; "
            f"{HINT}; the newest "
            f"checkpoint is kept and a re-run resumes from it"
        ) from None


def address_space_warning(limit: int | None = None) -> str | None:
    """The warning to print when RLIMIT_AS (`ulimit -v`) is below MIN_ADDRESS_SPACE.

    Args:
        limit: the soft limit in bytes; None reads this process's.

    Returns:
        One line, or None when the limit is unlimited or high enough.
    """
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY or limit >= MIN_ADDRESS_SPACE:
        return None
    return (
        f"warning: the address-space limit (ulimit -v) is {limit / 2**30:.1f} GiB, below the "
        f"{MIN_ADDRESS_SPACE / 2**30:.0f} GiB even the tiny config needs with margin; XLA may "
        f"abort with std::bad_alloc (exit 134): raise it, e.g. `ulimit -v unlimited`"
    )
