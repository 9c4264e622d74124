"""bench/tpu_shapes.py: the mission's shapes, resumable, rendered between markers (no compile)."""

import json

import pytest
import tpu_shapes  # bench/ (on the path via tests/conftest.py)


def _plan(fits, advice="fits at 64 rows per shard"):
    memory = {
        "argument_bytes": 2 * 2**30,
        "temp_bytes": 10 * 2**30,
        "output_bytes": 2**30,
        "alias_bytes": 2**30,
        "peak_bytes": 12 * 2**30,
        "compile_s": 42.0,
        "error": "",
        "error_temp_bytes": 0,
        "host_callbacks": 0,
    }
    return {
        "topology": "v5p:2x2x1",
        "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
        "batch_size": 256,
        "rows_per_shard": 64,
        "micro_batches": 4,
        "remat": "none",
        "hbm_bytes_per_device": 16 * 2**30,
        "fits": fits,
        "advice": advice,
        "probes": [{"rows": 64, "fits": fits, "peak_bytes": 12 * 2**30}],
        "wall_s": 50.0,
        "programs": [
            {
                "name": "phase 1 (kd)",
                "fits": fits,
                "memory": memory,
                "roofline": {"step_s": 0.25, "tokens_per_s": 2_000_000.0},
            }
        ],
    }


def test_shapes_are_unique_and_students_come_first():
    shapes = tpu_shapes.all_shapes()
    ids = [s["id"] for s in shapes]
    # Students 2 x 4 methods x 3 topologies; dump 2 V x 2 samples x 3 profiles x 3
    # topologies; live teacher 2 pairs x 2 methods x 3 topologies.
    assert len(ids) == len(set(ids)) == 2 * 4 * 3 + 2 * 2 * 3 * 3 + 2 * 2 * 3
    assert shapes[0]["group"] == "students" and shapes[-1]["group"] == "live"
    assert tpu_shapes.command(shapes[0])[:4] == ["-m", "trainer.plan", "train", "--config"]
    # The live shapes plan a teacher by name and search where they do not fit.
    live = tpu_shapes.run_order({})[-12]
    assert live["id"] == "live-gemma3_270m-kd-gemma3-1b-v5e_4x4"
    assert "--teacher" in live["args"] and "--no-search" not in live["args"]


def test_runner_skips_shapes_already_done_and_searches_a_misfit(tmp_path, monkeypatch):
    ran = []

    def fake_run(shape, results, timeout):
        ran.append(shape["id"])
        record = {"id": shape["id"], "status": "ok", "plan": _plan(fits=False)}
        (results / f"{shape['id']}.json").write_text(json.dumps(record))
        return {**record, "wall_s": 1.0, "load_avg_end": 0.0}

    monkeypatch.setattr(tpu_shapes, "run_shape", fake_run)
    only = "gemma3_270m-kd-v5p"
    (tmp_path / "r").mkdir()
    argv = ["--results", str(tmp_path / "r"), "--only", only]
    assert tpu_shapes.main(argv) == 0
    # The shape, then (it does not fit) its search; a second batch finds both done.
    assert ran == [f"train-gemma3_270m-kd-v5p_2x2x1{s}" for s in ("", "-search")]
    assert (
        "--no-search"
        not in tpu_shapes.search_shapes(tpu_shapes.load_results(tmp_path / "r"))[0]["args"]
    )
    assert tpu_shapes.main(argv) == 0 and len(ran) == 2


def test_report_renders_between_markers_and_lists_what_did_not_run(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    rec = {
        "id": "train-gemma3_270m-kd-v5p_2x2x1",
        "group": "students",
        "status": "ok",
        "started": "2026-12-06 08:30 UTC",
        "load_avg_start": 3.0,
        "load_avg_end": 5.0,
        "plan": _plan(fits=True),
    }
    (results / f"{rec['id']}.json").write_text(json.dumps(rec))
    timeout = {**rec, "id": "train-gemma3_1b-kd-v5p_2x2x1", "status": "timeout", "timeout_s": 1200}
    timeout.pop("plan")
    (results / f"{timeout['id']}.json").write_text(json.dumps(timeout))
    doc = tmp_path / "tpu.md"
    doc.write_text(
        "intro\n<!-- tpu_shapes:students:begin -->\nold\n<!-- tpu_shapes:students:end -->\n"
        "mid\n<!-- tpu_shapes:dump:begin -->\n<!-- tpu_shapes:dump:end -->\n"
        "<!-- tpu_shapes:live:begin -->\n<!-- tpu_shapes:live:end -->\nend\n"
    )
    live = {**rec, "id": "live-gemma3_270m-kd-gemma3-1b-v5p_2x2x1", "group": "live"}
    (results / f"{live['id']}.json").write_text(json.dumps(live))
    assert tpu_shapes.main(["--results", str(results), "--doc", str(doc), "--report-only"]) == 0
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n")
    row = next(line for line in text.splitlines() if line.startswith("| gemma3-270m kd "))
    # args 2.00, temp 10.00, outputs not donated 0.00, peak 12.00 of 16.00 GiB.
    assert "| 2.00 | 10.00 | 0.00 | 12.00 / 16.00 | yes | 42 |" in row
    assert "| gemma3-1b kd | v5p:2x2x1 | 256 | | | | timed out after 1200 s |" in text
    # Shapes without a result are listed once each after their table.
    assert "gemma3-270m nll on v5p:2x2x1, v5e:4x4, v6e:2x4;" in text
    assert "gemma3-270m kd on v5e:4x4, v6e:2x4;" in text
    assert "V = 32,000, 12 samples, lean on v5e:2x2, v5p:2x2x1, v6e:2x2." in text
    assert (
        "2 of 24" not in text and "1 of 24 shapes planned (2026-12-06; load average 3.0–5.0" in text
    )
    assert "| gemma3-270m kd ← gemma3-1b (live) | v5p:2x2x1, 1/4/1 | 256 (64) |" in text
    assert "1 of 12 shapes planned" in text


def test_dump_rows_compare_bytes_with_an_independent_estimate():
    # tiny at V=512, counted by hand: embedding 512x64 = 32,768; per block q 64x64, k and v
    # 64x32 each, o 64x64, GeGLU 2x64x128 + 128x64, norms 4x64 + 2x32 = 37,184; 4 blocks
    # and the final norm 64: 181,568 parameters.
    params = 32_768 + 4 * 37_184 + 64
    rows, T, k, D = 2, 32, 8, 64
    tokens = rows * T * 4
    # The exact profile's arrays of 2 rows: top-k ids (uint16: V <= 65,536) + fp16
    # log-probs, fp16 activations and their fp32 per-token RMS.
    out = rows * T * (k * 2 + k * 2 + D * 2 + 4)
    plan = {
        "teacher": "tiny",
        "vocab_size": 512,
        "rows_per_shard": rows,
        "seq_len": T,
        "k": k,
        "samples": 0,
        "layers": [2],
        "profile": "exact",
        "params": "replicated",
        "num_devices": 4,
    }
    assert tpu_shapes.dump_estimate(plan) == (params * 2 + tokens, out)
    memory = {"error": "", "argument_bytes": int((params * 2 + tokens) * 1.01)}
    prog = {"memory": {**memory, "output_bytes": out}}
    assert tpu_shapes._vs_estimate(plan, prog) == "+1.00%, +0.00%"


def test_report_without_markers_names_them():
    with pytest.raises(ValueError, match="tpu_shapes:students:begin"):
        tpu_shapes.splice("no markers", "students", "x")
