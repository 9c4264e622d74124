"""What the planner says to change when a shape does not fit (issue 25's knobs), and its
search in whole micro-batches (CPU compiler; no libtpu needed)."""

import jax
import pytest

from trainer.plan import advice, chips, report, targets
from trainer.plan import devices as devices_lib


def _train_result(**over):
    result = {
        "target": "train",
        "fits": False,
        "rows_per_shard": 64,
        "row_step": 4,
        "batch_shards": 4,
        "largest_fitting_rows": None,
        "micro_batches": 4,
        "remat": "none",
        "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
    }
    return {**result, **over}


def test_advice_names_micro_batches_then_stronger_remat_policies():
    line = advice.advice(_train_result())
    # 64 rows per shard: 8 is the next count above 4 dividing 64 (5, 6, 7 do not).
    assert "--set data.micro_batches=8" in line
    assert "--set model.remat=dots_no_batch|qkv_and_outputs|full" in line
    assert line.index("micro_batches") < line.index("model.remat")
    assert "a larger slice" in line  # fsdp already spans the 4 devices


def test_advice_offers_fsdp_when_params_are_replicated_and_no_remat_past_full():
    line = advice.advice(_train_result(remat="full", mesh={"data": 4, "fsdp": 1, "tensor": 1}))
    assert "model.remat" not in line
    assert "--set mesh.fsdp=4 --set mesh.data=1" in line


def test_advice_keeps_the_batch_with_more_micro_batches_from_the_search():
    # 24 of 64 rows fit at 4 micro-batches: 6 rows per micro-batch fit, so 64 rows need
    # 64 / m <= 6 with m dividing 64: m = 16 (4 rows each; 8 gives 8 > 6).
    line = advice.advice(_train_result(largest_fitting_rows=24))
    assert "the largest that fits is 24 rows per shard (global batch 96)" in line
    assert "--set data.micro_batches=16 (4 rows per micro-batch, estimated from the 6" in line
    assert advice.micro_batches_to_fit(64, 4, 24) == 16
    assert advice.micro_batches_to_fit(64, 4, 3) is None  # not one row per micro-batch


def test_advice_when_not_even_one_micro_batch_row_fits():
    line = advice.advice(_train_result(largest_fitting_rows=0))
    assert line.startswith("does not fit even at 4 rows per shard: try")


def test_stronger_remat_follows_the_measured_order():
    assert advice.stronger_remat("qkv_and_outputs") == ["full"]
    assert advice.stronger_remat("full") == []
    assert advice.more_micro_batches(16, 16) is None


class _MicroBatchedTarget:
    """Peak exactly 2 x rows x 4 KiB; rows must be whole micro-batches of 4 (as a trainer's)."""

    kind, shards, row_step = "train", 1, 4

    def __init__(self, rows):
        self.requested_rows = rows

    def describe(self):
        return {
            "config": "linear",
            "remat": "none",
            "micro_batches": 4,
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        }

    def param_bytes(self):
        return 0

    def programs(self, rows):
        if rows % self.row_step:
            raise ValueError(f"{rows} rows are not whole micro-batches of 4")
        sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        arg = jax.ShapeDtypeStruct((rows, 1024), jax.numpy.float32, sharding=sharding)
        return [targets.StepProgram("double", jax.jit(lambda x: x * 2), (arg,), rows, 1.0)]


@pytest.mark.parametrize("requested, search_up", [(64, False), (4, True)])
def test_search_counts_in_whole_micro_batches(requested, search_up):
    topo = chips.parse_topology("v5e:1x1")
    devices = devices_lib.plan_devices(topo, "cpu")
    capacity = 2 * 10 * 4096 + 100  # 10 rows fit, 11 do not: 8 is the largest multiple of 4
    rep = report.make_plan(
        _MicroBatchedTarget(requested),
        topo,
        devices,
        "cpu",
        hbm_bytes=capacity,
        search_up=search_up,
        max_rows=64,
    )
    assert rep["largest_fitting_rows"] == 8
    for probe in rep["probes"]:
        assert probe["rows"] % 4 == 0 and probe["fits"] is (probe["rows"] <= 8)
        assert probe["peak_bytes"] == 2 * probe["rows"] * 4096
    if not search_up:
        assert "the largest that fits is 8 rows per shard" in rep["advice"]
