"""bench/onpolicy_memory.py: its ratio/target logic on hand-made rows, and one tiny compile."""

import onpolicy_memory  # bench/ (on the path via tests/conftest.py)
import pytest

MIB = 2**20


def _row(platform, vocab, signal, method, peak_mib, error=""):
    return {
        "platform": platform,
        "vocab": vocab,
        "signal": signal,
        "method": method,
        "argument_bytes": peak_mib * MIB // 2,
        "temp_bytes": peak_mib * MIB - peak_mib * MIB // 2,
        "output_bytes": 0,
        "alias_bytes": 0,
        "peak_bytes": peak_mib * MIB,
        "compile_s": 1.0,
        "error": error,
    }


def test_ratios_and_target_per_vocab_and_signal():
    rows = [
        _row("cpu", 32000, "live", "opd", 100),
        _row("cpu", 32000, "live", "oprd", 60),  # exactly 0.6: met
        _row("cpu", 32000, "live", "oprd+opd", 110),
        _row("cpu", 32000, "stored", "opd", 100),
        _row("cpu", 32000, "stored", "oprd", 61),  # 0.61: missed
        _row("cpu", 2048, "live", "opd", 100),
        _row("cpu", 2048, "live", "oprd", 90),  # V < 32k: the target does not apply
        _row("v5p:2x2x1", 32000, "live", "opd", 100),
        _row("v5p:2x2x1", 32000, "live", "oprd", 0, error="RESOURCE_EXHAUSTED: ..."),
    ]
    ratios = {(r["platform"], r["vocab"], r["signal"]): r for r in onpolicy_memory.ratio_rows(rows)}
    live = ratios[("cpu", 32000, "live")]
    assert live["oprd/opd"] == pytest.approx(0.6) and live["target_met"] is True
    assert live["oprd+opd/opd"] == pytest.approx(1.1)
    assert ratios[("cpu", 32000, "stored")]["target_met"] is False
    assert ratios[("cpu", 2048, "live")]["target_met"] is None
    # A step that did not compile has no peak: no ratio, never "met".
    assert "oprd/opd" not in ratios[("v5p:2x2x1", 32000, "live")]
    table = onpolicy_memory.format_table(rows)
    assert "oprd/opd 0.600" in table and "MISSED" in table and "n/a (V < 32k)" in table


@pytest.mark.slow  # two compiles of the tiny on-policy steps
def test_compiles_the_trainers_opd_and_oprd_steps(tmp_path):
    args = onpolicy_memory._parse(["--student", "tiny", "--teacher", "tiny-7", "--batch", "2"])
    args.seq = 16
    from trainer.model import model_config

    teacher_cfg = model_config.get_config("tiny-7", vocab_size=512)
    teacher_dir = onpolicy_memory.write_config_only_checkpoint(str(tmp_path / "t"), teacher_cfg)
    import jax

    peaks = {}
    for method, signal in (("opd", "live"), ("oprd", "stored")):
        sets = onpolicy_memory.case_overrides(args, method, signal, 512, teacher_cfg, teacher_dir)
        result, batch = onpolicy_memory.compile_case(sets, "tiny", jax.devices()[:1])
        assert result.compiled and result.temp_bytes > 0
        peaks[method] = result.peak_bytes
        # A live teacher reads tokens + loss_mask; the stored OPRD signal also the hidden layer.
        expected = {"tokens", "loss_mask"} | ({"hidden/3"} if signal == "stored" else set())
        assert set(batch) == expected, batch
    assert peaks["oprd"] < peaks["opd"]
