"""trainer.plan: the planner's figures, its search, its bad-input lines (CPU compiler; no libtpu needed).

The TPU-compiler tests are in test_plan_tpu.py (skipped without libtpu).
"""

import json

import jax
import pytest

from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config
from trainer.plan import __main__ as cli
from trainer.plan import chips, report, search, targets
from trainer.plan import devices as devices_lib
from trainer.plan.chips import GiB


def _plan_cpu(target, topology="v5e:2x2"):
    del target
    topo = chips.parse_topology(topology)
    devices = devices_lib.plan_devices(topo, "cpu")
    return topo, devices


def _dump(rows=2, params="replicated", dtype="float32", profile="", devices=None):
    opts = targets.DumpOptions(
        teacher="tiny",
        vocab_size=512,
        dtype=dtype,
        seq_len=32,
        k=8,
        token_tile=32,
        profile=profile,
        params=params,
    )
    return targets.DumpTarget(opts, devices, "cpu", rows)


def test_parse_topology_counts_chips_and_refuses_unknown_names():
    topo = chips.parse_topology("v5p:2x2x1")
    assert (topo.chip.name, topo.num_chips) == ("v5p", 4)
    assert chips.parse_topology("v5e:4x4").num_chips == 16
    for bad in ("v9:2x2", "v5e", "v5e:axb", "v5e:0x2"):
        with pytest.raises(chips.PlanInputError, match="v5e:2x2"):
            chips.parse_topology(bad)


def test_dump_argument_bytes_equal_trainer_flops_param_count_times_bytes_per_param():
    # Independent number: trainer.flops counts parameters from the model tree; the
    # compiler's per-device argument bytes must be exactly count x 4 B (float32
    # teacher) plus the int32 tokens of that device, replicated and FSDP-sharded.
    topo, devices = _plan_cpu(None)
    count = flops.param_counts(model_config.get_config("tiny", vocab_size=512))["total_params"]
    rows, T = 2, 32
    rep = report.make_plan(_dump(rows, devices=devices), topo, devices, "cpu")
    mem = rep["programs"][0]["memory"]
    assert mem["argument_bytes"] == count * 4 + rows * T * 4
    assert rep["param_bytes"] == count * 4
    fsdp = report.make_plan(_dump(rows, params="fsdp", devices=devices), topo, devices, "cpu")
    # FSDP splits every array with a d_model ("embed") axis over the 4 devices; the
    # QK-norm scales ([L, head_dim]) have none and stay whole on each device.
    cfg = model_config.get_config("tiny", vocab_size=512)
    axes = jax.tree.leaves(model.param_logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(flops.param_shapes(cfg))
    per_device = sum(s.size // 4 if "embed" in a else s.size for a, s in zip(axes, shapes))
    assert sum(s.size for s in shapes) == count
    assert fsdp["programs"][0]["memory"]["argument_bytes"] == per_device * 4 + rows * T * 4


def test_roofline_uses_trainer_flops_and_chip_figures():
    topo, devices = _plan_cpu(None)
    rep = report.make_plan(_dump(2, devices=devices), topo, devices, "cpu")
    prog = rep["programs"][0]
    cfg = model_config.get_config("tiny", vocab_size=512)
    counts = flops.model_flops(cfg, seq_len=32)
    per_token = (counts["flops_per_token"]["nll"] + counts["attention_flops_per_token"]) / 3
    assert prog["flops_per_token"] == pytest.approx(per_token)
    tokens = 2 * 4 * 32
    roof = prog["roofline"]
    assert roof["compute_s"] == pytest.approx(per_token * tokens / (4 * 197e12))
    moved = prog["memory"]["argument_bytes"] + prog["memory"]["output_bytes"]
    assert roof["memory_s"] == pytest.approx(moved / 819e9)
    assert roof["tokens_per_s"] == pytest.approx(tokens / max(roof["compute_s"], roof["memory_s"]))


def test_search_finds_the_largest_fitting_rows_of_a_linear_memory_model():
    calls = []

    def probe(rows):
        calls.append(rows)
        peak = 1000 + 37 * rows
        return peak <= 1000 + 37 * 45, peak

    largest, probes = search.largest_fitting(
        probe, hi=64, capacity=1000 + 37 * 45, hi_peak=1000 + 37 * 64
    )
    assert largest == 45 and [p["rows"] for p in probes] == calls
    assert all(0 < r < 64 for r in calls) and len(calls) <= 2 * 6 + 1
    nothing, _ = search.largest_fitting(lambda r: (False, None), hi=64, capacity=1)
    assert nothing == 0


def test_planner_refuses_a_shape_that_cannot_fit_and_names_the_largest_that_does(capsys):
    # HBM set to the compiler's peak at 2 rows per device: 4 rows cannot fit and 2
    # is the largest that does (more rows only add tokens, logits and outputs).
    topo, devices = _plan_cpu(None)
    small = report.make_plan(
        _dump(2, dtype="bfloat16", devices=devices), topo, devices, "cpu", search=False
    )
    peak = small["programs"][0]["memory"]["peak_bytes"]
    rc = cli.main(
        [
            "dump",
            "--teacher",
            "tiny",
            "--vocab",
            "512",
            "--seq-len",
            "32",
            "--k",
            "8",
            "--token-tile",
            "32",
            "--profile",
            "none",
            "--rows-per-device",
            "4",
            "--topology",
            "v5e:2x2",
            "--platform",
            "cpu",
            "--hbm-gib",
            str(peak / GiB),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "DOES NOT FIT" in out
    assert "the largest that fits is 2 rows per shard (global batch 8)" in out


def test_planner_json_takes_any_config_override(capsys):
    rc = cli.main(
        [
            "train",
            "--config",
            "tiny:nll",
            "--set",
            "model.remat=True",
            "--set",
            "mesh.fsdp=4",
            "--topology",
            "v5e:2x2",
            "--platform",
            "cpu",
            "--json",
        ]
    )
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["fits"] and rep["remat"] == "full"  # True: the legacy spelling
    assert rep["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert rep["programs"][0]["memory"]["argument_bytes"] > 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--config", "tiny:kd", "--topology", "v9:2x2"], "unknown topology 'v9:2x2'"),
        (
            ["train", "--config", "tiny:kd", "--set", "mesh.data=3", "--topology", "v5e:2x2"],
            "needs 3 devices but 4 exist",
        ),
        (
            ["train", "--config", "tiny:kd", "--set", "data.batch_size=6", "--topology", "v5e:2x2"],
            "use a multiple of 4",
        ),
        (["train", "--config", "tiny:kd", "--topology", "v5p:4x4x4"], "needs 64 host devices"),
        (
            [
                "dump",
                "--teacher",
                "tiny",
                "--vocab",
                "512",
                "--params",
                "ring",
                "--topology",
                "v5e:2x2",
            ],
            "unknown params placement 'ring'",
        ),
        # The live teacher (train --teacher): an unknown model, a method that reads no
        # teacher, two teachers at once, a width the hidden term cannot use.
        (
            ["train", "--config", "tiny:kd", "--teacher", "gemma9", "--topology", "v5e:2x2"],
            "--teacher 'gemma9' is not a model name; pass one of ['gemma3-270m'",
        ),
        (
            ["train", "--config", "tiny:nll", "--teacher", "tiny-7", "--topology", "v5e:2x2"],
            "method nll reads no teacher; drop it",
        ),
        (
            ["train", "--config", "tiny:kd", "--teacher", "tiny-7"]
            + ["--set", "teacher.checkpoint=/x", "--topology", "v5e:2x2"],
            "both name the live teacher; pass one of them",
        ),
        (
            ["train", "--config", "tiny:oprd", "--teacher", "gemma3-270m"]
            + ["--topology", "v5e:2x2"],
            "--teacher gemma3-270m does not fit this run: its width is 640 but "
            "teacher.d_model=64 (--set teacher.d_model=640)",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(argv, needle, capsys):
    rc = cli.main(argv + ["--platform", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_live_teacher_arguments_are_its_fsdp_sharded_fp32_params():
    # Independent number: a live teacher enters the step as one more argument, its fp32
    # params sharded by the student's rules (FSDP splits every array with an "embed" axis
    # over the 4 devices, the rest stays whole). A live KD step reads tokens only, like
    # NLL, and holds the same train state: the argument bytes differ by exactly those params.
    topo, devices = _plan_cpu(None)

    def args(method, teacher=""):
        target = targets.TrainTarget(f"tiny:{method}", ["mesh.fsdp=4"], devices, teacher=teacher)
        rep = report.make_plan(target, topo, devices, "cpu", search=False)
        assert rep["fits"]
        return rep, rep["programs"][0]["memory"]["argument_bytes"]

    live, live_args = args("kd", teacher="tiny-7")
    _, nll_args = args("nll")
    cfg = model_config.get_config("tiny-7", vocab_size=512)
    axes = jax.tree.leaves(model.param_logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    shapes = jax.tree.leaves(flops.param_shapes(cfg))
    per_device = sum(s.size // 4 if "embed" in a else s.size for a, s in zip(axes, shapes))
    assert live_args - nll_args == per_device * 4
    count = flops.param_counts(cfg)["total_params"]
    assert live["live_teacher"]["model"] == "tiny-7"
    assert live["live_teacher"]["param_bytes"] == count * 4
    # The roofline counts the teacher's forward (not charged to the budget by default).
    fwd = flops.teacher_forward_flops(cfg, seq_len=live["seq_len"])["full"]
    kd = flops.model_flops(model_config.get_config("tiny", vocab_size=512), seq_len=live["seq_len"])
    student = kd["flops_per_token"]["kd"] + kd["attention_flops_per_token"]
    assert live["programs"][0]["flops_per_token"] == pytest.approx(student + fwd)


def test_tpu_platform_without_libtpu_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(devices_lib, "libtpu_available", lambda: False)
    rc = cli.main(["train", "--config", "tiny:kd", "--topology", "v5e:2x2"])
    err = capsys.readouterr().err
    assert rc == 2 and "libtpu is not installed" in err and "'.[tpu]'" in err


def test_host_callbacks_in_a_step_are_counted():
    from trainer.plan import compile as compile_lib

    def step(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    arg = jax.ShapeDtypeStruct((4,), jax.numpy.float32)
    assert compile_lib.compile_memory(jax.jit(step), arg).host_callbacks == 1
    assert compile_lib.compile_memory(jax.jit(lambda x: x * 2), arg).host_callbacks == 0


class _LinearTarget:
    """A target whose per-device peak is exactly 2 x rows x 4 KiB (argument + output)."""

    kind, shards = "dump", 1

    def __init__(self, rows):
        self.requested_rows = rows

    def describe(self):
        return {"config": "linear", "params": "replicated"}

    def param_bytes(self):
        return 0

    def programs(self, rows):
        sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        arg = jax.ShapeDtypeStruct((rows, 1024), jax.numpy.float32, sharding=sharding)
        return [targets.StepProgram("double", jax.jit(lambda x: x * 2), (arg,), rows, 1.0)]


@pytest.mark.parametrize("requested, search_up", [(40, False), (2, True)])
def test_make_plan_finds_the_largest_fitting_rows_from_above_and_below(requested, search_up):
    topo = chips.parse_topology("v5e:1x1")
    devices = devices_lib.plan_devices(topo, "cpu")
    capacity = 2 * 10 * 4096 + 100  # 10 rows fit, 11 do not
    rep = report.make_plan(
        _LinearTarget(requested),
        topo,
        devices,
        "cpu",
        hbm_bytes=capacity,
        search_up=search_up,
        max_rows=64,
    )
    assert rep["largest_fitting_rows"] == 10
    assert rep["fits"] is search_up
    for probe in rep["probes"]:
        assert probe["fits"] is (probe["rows"] <= 10)
        assert probe["peak_bytes"] == 2 * probe["rows"] * 4096


def test_oprd_on_several_stored_layers_is_planned():
    # A multi-layer OPRD run reads every listed layer from its rollout store: the planner's
    # store schema must carry them all (it once carried teacher.hidden_layer alone and
    # refused the plan: "oprd reads ['hidden/1', 'hidden/2'] ... lacks").
    topo, devices = _plan_cpu(None)
    sets = ["teacher.hidden_layer=1", "onpolicy.hidden_layers=1,2", "teacher.d_model=64"]
    target = targets.TrainTarget("tiny:oprd", sets, devices)
    rep = report.make_plan(target, topo, devices, "cpu", search=False)
    assert rep["fits"]
