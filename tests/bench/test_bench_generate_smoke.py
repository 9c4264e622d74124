"""bench/generate_bench.py runs at a tiny size and reports what it measured, with FLOPs by hand."""

import importlib.util
import json
import pathlib

import pytest


@pytest.mark.slow  # compiles: forward (twice), prefill, decode step, two scans, generate × 2
def test_generate_bench_runs(tmp_path, capsys):
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / "generate_bench.py"
    spec = importlib.util.spec_from_file_location("generate_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--model", "tiny", "--batch", "2", "--prompt-len", "4", "--new-tokens", "4"]
    assert bench.main(argv + ["--repeats", "1", "--out", str(tmp_path)]) == 0
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    r = result["results"]
    assert (result["model"], result["batch"], result["prompt_len"], result["new_tokens"]) == (
        "tiny",
        2,
        4,
        4,
    )
    # tiny: N = 148,800 backbone params, V=512, D=64, four local layers (W=8), 2 heads of 32:
    # 256 FLOPs per attended key and layer. Forward at T=8: 2N + 2·64·512 + 4·(1+...+8)·256/8.
    assert r["forward_flops_per_token"] == 2 * 148_800 + 65_536 + 4 * 36 * 256 / 8 == 367_744
    # Decode at context 4 + 2 + 1 = 7 keys on each of the four layers.
    assert r["decode_flops_per_token"] == 2 * 148_800 + 65_536 + 4 * 7 * 256 == 370_304
    for key in ("forward_s", "decode_step_s", "generate_s", "loop_step_s"):
        assert r[key] >= 0
    for key in ("scanned_decode_step_s", "jit_call_s", "sample_s"):
        assert r[key] >= 0
    # The compiler's counts: the forward's FLOPs per token as trainer.flops counts them
    # (within 5%: the compiler also counts norms and the softmax), bytes and kernels > 0.
    counts = r["compiled_counts"]
    assert counts["forward"]["flops_per_token"] == pytest.approx(367_744, rel=0.05)
    assert counts["decode_step"]["flops_per_token"] == pytest.approx(370_304, rel=0.05)
    assert counts["decode_step"]["kernels_per_call"] > 0
    assert counts["bytes_per_token_ratio"] > 0
    assert r["decode_over_forward"] == pytest.approx(r["decode_step_s"] / 2 / (r["forward_s"] / 16))
    assert "decode / forward per token" in capsys.readouterr().out
