"""What `hd-flops` and the trainer print explain themselves: each FLOPs/token row
(the `ht` row is HLDF's phase 1) and the objective-penalty line say what they count."""

from store import objective_penalty
from trainer import flops


def test_every_cost_row_says_what_it_counts():
    table = flops.format_table(flops.report("tiny", "tiny", 512, seq_len=64))
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("  ")}
    assert "HLDF phase 1" in rows["ht"] and "no de-embedding" in rows["ht"]
    assert "6N + 6·d_S·V" in rows["nll"] and "from the store" in rows["kd"]
    assert "regressor" in rows["hldc"]


def test_the_penalty_line_says_what_it_means():
    summary = {
        "alpha": 0.7,
        "tau": 1.0,
        "tail": "bucket",
        "penalty_nats": 0.001,
        "penalty_max_nats": 0.002,
        "positions": 10,
        "warn": False,
        "threshold_nats": 0.02,
    }
    line = objective_penalty.describe(summary)
    assert line.startswith("objective penalty (alpha=0.7, tau=1, tail=bucket): 0.0010")
    assert "would still lose to the teacher" in line
