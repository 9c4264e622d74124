"""The largest batch that fits, by bisection on compiles.

Each probe is a compile (seconds for tiny models, ~90 s for the 4B teacher on
a loaded 2-core box), so the probe point is interpolated from the peak bytes
of the two bracketing compiles when both are known (memory is close to
linear in rows), alternating with plain midpoints so the bracket always at
least halves every two probes. Every probe is strictly inside the bracket, so
the search ends after at most 2·log2(hi) probes.
"""

from __future__ import annotations

from collections.abc import Callable


def largest_fitting(
    probe: Callable[[int], tuple[bool, int | None]],
    hi: int,
    capacity: int,
    hi_peak: int | None = None,
    lo: int = 0,
    lo_peak: int | None = None,
) -> tuple[int, list[dict]]:
    """The largest rows in [lo, hi) for which `probe` fits, knowing `hi` does not.

    Args:
        probe: rows -> (fits, peak bytes per device or None if unknown).
        hi: a row count known not to fit (> 0).
        capacity: bytes per device that fit (for the interpolation).
        hi_peak: peak bytes at `hi`, if known.
        lo: a row count known to fit (0: none known).
        lo_peak: peak bytes at `lo`, if known.

    Returns:
        (largest fitting rows, 0 if even 1 row does not fit; the probes made as
        [{"rows", "fits", "peak_bytes"}] in order).
    """
    probes = []
    interpolated = False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if lo == 0:
            mid = 1  # One row first: if that does not fit, nothing will.
            interpolated = False
        elif not interpolated and lo_peak is not None and hi_peak is not None and hi_peak > lo_peak:
            guess = lo + int((capacity - lo_peak) * (hi - lo) / (hi_peak - lo_peak))
            mid = min(max(guess, lo + 1), hi - 1)
            interpolated = True
        else:
            interpolated = False
        fits, peak = probe(mid)
        probes.append({"rows": mid, "fits": fits, "peak_bytes": peak})
        if fits:
            lo, lo_peak = mid, peak
        else:
            hi, hi_peak = mid, peak
            if mid == 1:
                break
    return lo, probes
