"""The chips the planner knows, each figure with its public source, and topology names.

A topology is what `jax.experimental.topologies.get_topology_desc` takes
("v5e:2x2", "v5p:2x2x1"): a chip generation and the chip grid. Its chip
count is the product of the grid. Figures are per chip, from Google Cloud's
TPU system-architecture pages (retrieved 2026-12-06). HBM is what the page
states; the compiler's own limit can differ slightly (libtpu reports
95.74 GiB on v5p against the page's "95 GB"), and the compiler refuses a
program over its own limit whatever this table says.
"""

from __future__ import annotations

import dataclasses
import math

from trainer.model.errors import ConfigError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of one TPU generation.

    Attributes:
        name: generation as in topology names ("v5p").
        hbm_bytes: HBM capacity per chip.
        peak_bf16_flops: peak dense bf16 FLOP/s per chip.
        hbm_bytes_per_s: HBM bandwidth per chip.
        source: the public page the three figures come from.
    """

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    source: str


CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        # "Peak compute per chip 275 teraflops (bf16 or int8); HBM2 capacity and bandwidth 32 GiB, 1200 GBps"
        Chip("v4", 32 * GiB, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
        # "Peak compute per chip (bf16) 197 TFLOPs; HBM2 capacity and bandwidth 16 GB, 819 GBps"
        Chip("v5e", 16 * GiB, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
        # "Peak compute per chip (bf16) 459 TFLOPs; HBM2e capacity and bandwidth 95GB, 2765 GBps"
        Chip("v5p", 95 * GiB, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
        # "Peak compute per chip (bf16) 918 TFLOPs; HBM capacity per chip 32 GB; HBM bandwidth per chip 1638 GBps"
        Chip("v6e", 32 * GiB, 918e12, 1638e9, "https://cloud.google.com/tpu/docs/v6e"),
    )
}


PlanInputError = ConfigError  # Bad planner input: topology, mesh, platform


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology name.

    Attributes:
        name: as given ("v5p:2x2x1"), what libtpu resolves.
        chip: the chip's figures.
        grid: chips per dimension.
    """

    name: str
    chip: Chip
    grid: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        """Chips in the slice."""
        return math.prod(self.grid)


def parse_topology(name: str) -> Topology:
    """ "v5e:2x2" -> Topology.

    Raises:
        PlanInputError: an unknown generation or a malformed grid, naming the fix.
    """
    gen, sep, grid_text = str(name).partition(":")
    known = ", ".join(f"{c}:2x2" if c in ("v5e", "v6e") else f"{c}:2x2x1" for c in CHIPS)
    if gen not in CHIPS or not sep:
        raise PlanInputError(
            f"unknown topology {name!r}: pass GENERATION:GRID with GENERATION one "
            f"of {sorted(CHIPS)}, e.g. {known}"
        )
    try:
        grid = tuple(int(x) for x in grid_text.split("x"))
    except ValueError:
        grid = ()
    if not grid or any(g < 1 for g in grid):
        raise PlanInputError(f"topology {name!r} has no chip grid: write it as e.g. {known}")
    return Topology(name=f"{gen}:{grid_text}", chip=CHIPS[gen], grid=grid)
