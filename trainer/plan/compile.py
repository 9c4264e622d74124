"""Compile a jitted function on abstract arguments; its per-device memory figures.

`jax.jit(f).lower(*abstract).compile()` runs the backend's compiler and
allocates nothing. `Compiled.memory_analysis()` gives per-device bytes of
the arguments, the temporaries, the outputs, and the output bytes that alias
a donated argument (counted once). A program over the compiler's own memory
limit does not compile ("RESOURCE_EXHAUSTED ... exceeds available HBM"):
that is recorded as not fitting, with the bytes the compiler named.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What one compile says about memory (per device).

    Attributes:
        argument_bytes / temp_bytes / output_bytes / alias_bytes: from
            memory_analysis (0 when the compile failed).
        compile_s: wall seconds of lower + compile.
        error: "" or the compiler's one-line refusal (out of memory).
        error_temp_bytes: the temporaries the refusal names, if any.
        host_callbacks: host callbacks in the lowered program (a step should have
            none: each one stops the device and round-trips to the host).
    """

    argument_bytes: int = 0
    temp_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    compile_s: float = 0.0
    error: str = ""
    error_temp_bytes: int = 0
    host_callbacks: int = 0

    @property
    def compiled(self) -> bool:
        """True if the compiler accepted the program."""
        return not self.error

    @property
    def peak_bytes(self) -> int:
        """Live bytes per device: arguments + temporaries + outputs not aliased to a donated argument."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    def to_dict(self) -> dict:
        """JSON-ready, with peak_bytes."""
        return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _named_bytes(message: str) -> int:
    """The temporaries a RESOURCE_EXHAUSTED message names ("HLO temporaries (1.00T)")."""
    m = re.search(r"temporaries \(([\d.]+)([KMGT]?)\)", message)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def is_out_of_memory(err: Exception) -> bool:
    """Whether a compile error is the compiler refusing for memory."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "exceeds available" in text


def compile_memory(jitted, *abstract_args) -> CompileResult:
    """Lowers and compiles `jitted` on abstract arguments.

    Args:
        jitted: a `jax.jit` function (its shardings fix the devices).
        abstract_args: `jax.ShapeDtypeStruct`s (with shardings) or pytrees of them.

    Returns:
        A CompileResult; an out-of-memory refusal is a result with `error`.

    Raises:
        Any other compile error (a bug in the program, not a plan outcome).
    """
    start = time.perf_counter()
    lowered = jitted.lower(*abstract_args)
    callbacks = count_host_callbacks(lowered.as_text())
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        if not is_out_of_memory(err):
            raise
        line = next(
            (l for l in str(err).splitlines() if "RESOURCE_EXHAUSTED" in l or "exceeds" in l),
            str(err).splitlines()[0],
        )
        return CompileResult(
            compile_s=time.perf_counter() - start,
            error=line.strip()[:400],
            error_temp_bytes=_named_bytes(str(err)),
            host_callbacks=callbacks,
        )
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    return CompileResult(
        argument_bytes=int(mem.argument_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        compile_s=seconds,
        host_callbacks=callbacks,
    )


# Custom-call targets of jax.pure_callback / io_callback / debug.callback in StableHLO.
_CALLBACK = re.compile(r"custom_call @\w*callback")


def count_host_callbacks(stablehlo_text: str) -> int:
    """Host callbacks in a lowered program's StableHLO text."""
    return len(_CALLBACK.findall(stablehlo_text))
