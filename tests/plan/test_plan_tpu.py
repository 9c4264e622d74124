"""The real TPU compiler (libtpu, no TPU needed) on the tiny train and dump steps, v5e:2x2.

CI installs libtpu through the `tpu` extra (`make test`); elsewhere these
tests skip, saying how to get it.
"""

import pytest

from trainer import flops
from trainer.model import model_config
from trainer.plan import chips, report, targets
from trainer.plan import compile as compile_lib
from trainer.plan import devices as devices_lib

pytestmark = pytest.mark.skipif(
    not devices_lib.libtpu_available(),
    reason="libtpu is not installed: pip install -e '.[tpu]' (the "
    "pinned TPU compiler) to run the TPU compile tests",
)


@pytest.fixture(scope="module")
def v5e():
    topo = chips.parse_topology("v5e:2x2")
    return topo, devices_lib.plan_devices(topo, "tpu")


def test_v5e_topology_gives_four_abstract_tpu_devices(v5e):
    _, devices = v5e
    assert len(devices) == 4 and {d.platform for d in devices} == {"tpu"}


@pytest.mark.parametrize("method", ["kd", pytest.param("hldf", marks=pytest.mark.slow)])
def test_tiny_train_step_compiles_for_v5e(v5e, method):
    topo, devices = v5e
    target = targets.TrainTarget(f"tiny:{method}", ["mesh.fsdp=4"], devices)
    rep = report.make_plan(target, topo, devices, "tpu", search=False)
    assert rep["fits"] and len(rep["programs"]) == (2 if method == "hldf" else 1)
    for prog in rep["programs"]:
        mem = prog["memory"]
        assert mem["error"] == "" and mem["argument_bytes"] > 0 and mem["compile_s"] > 0
        # The donated state comes back in place: outputs alias the state arguments.
        assert mem["alias_bytes"] > 0


@pytest.mark.parametrize("method", ["kd", pytest.param("oprd", marks=pytest.mark.slow)])
def test_tiny_live_teacher_step_compiles_for_v5e(v5e, method):
    # A live teacher planned by name: abstract params, no checkpoint; the step takes them.
    topo, devices = v5e
    target = targets.TrainTarget(f"tiny:{method}", ["mesh.fsdp=4"], devices, teacher="tiny-7")
    rep = report.make_plan(target, topo, devices, "tpu", search=False)
    assert rep["fits"] and rep["live_teacher"]["model"] == "tiny-7"
    mem = rep["programs"][0]["memory"]
    assert mem["error"] == "" and mem["host_callbacks"] == 0 and mem["alias_bytes"] > 0
    count = flops.param_counts(model_config.get_config("tiny-7", vocab_size=512))["total_params"]
    # The teacher's fp32 params are an argument: at least a quarter on each device.
    assert mem["argument_bytes"] - mem["alias_bytes"] >= count  # 4 B x count / 4 devices


def test_tiny_dump_step_compiles_for_v5e_with_device_encoding(v5e):
    topo, devices = v5e
    opts = targets.DumpOptions(
        teacher="tiny",
        vocab_size=512,
        dtype="bfloat16",
        seq_len=64,
        k=8,
        samples=4,
        token_tile=64,
        profile="compact",
    )
    rep = report.make_plan(
        targets.DumpTarget(opts, devices, "tpu", 2), topo, devices, "tpu", search=False
    )
    assert rep["fits"] and rep["topk_group"] == 0 and rep["rank_float32"] is False
    count = flops.param_counts(model_config.get_config("tiny", vocab_size=512))["total_params"]
    # Replicated bf16 matmul weights (norms fp32): at least 2 B per parameter on every
    # device (TPU layouts may pad, never shrink).
    assert rep["programs"][0]["memory"]["argument_bytes"] >= 2 * count


def test_out_of_memory_refusal_is_parsed():
    msg = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
        "space hbm. Used 1.00T of 95.74G hbm. Exceeded hbm capacity by 927.5G.\n"
        "Total hbm usage >= 1.00T: ... HLO temporaries (1.00T) exceeds available HBM (95.74G)"
    )
    assert compile_lib.is_out_of_memory(RuntimeError(msg))
    assert compile_lib._named_bytes(msg) == int(1.00 * 2**40)
