"""Byte-level comparison of two stores, for reproducibility checks.

Reads every array with plain zarr-python (the raw stored bytes, independent of
this package's reader) and the commit ledger, so two dumps of the same input
can be shown identical (tests, bench/pipeline_bench.py).
"""

import numpy as np
import zarr

from store.writer import open_writer


def store_arrays(url: str) -> dict[str, np.ndarray]:
    """Every array of a store as numpy: {array path: stored values}."""
    group = zarr.open_group(url, mode="r")
    return {
        name: np.asarray(node[...])
        for name, node in group.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }


def store_differences(url_a: str, url_b: str) -> list[str]:
    """What differs between two stores; [] when they are identical.

    Args:
        url_a, url_b: the two stores.

    Returns:
        One line per difference: an array only in one store, a different
        dtype, shape or bytes, or different committed units.
    """
    a, b = store_arrays(url_a), store_arrays(url_b)
    diffs = [
        f"array {name} only in {url_a if name in a else url_b}" for name in sorted(set(a) ^ set(b))
    ]
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            diffs.append(f"array {name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        elif x.tobytes() != y.tobytes():
            diffs.append(f"array {name} differs")
    units_a, units_b = open_writer(url_a).committed_units(), open_writer(url_b).committed_units()
    if units_a != units_b:
        diffs.append(f"committed units differ: {sorted(units_a ^ units_b)[:10]}")
    return diffs
