"""The demo compares its runs on the rows they all were scored on (issue 23 §1)."""

from scripts import demo_results


def _run(*scores):
    return {
        "scores": {
            "heldout": [
                {"n": n, "rows": rows, "seq_len": 32, "log_ppl": v} for n, rows, v in scores
            ]
        }
    }


def test_shared_scores_use_the_common_row_set():
    runs = {
        "kd": _run((139, "full", 4.79)),
        "hldc": _run((139, "full", 4.7635), (100, "first100", 5.1235)),
    }
    got = demo_results.shared_scores(runs, "heldout")
    assert {k: v["log_ppl"] for k, v in got.items()} == {"kd": 4.79, "hldc": 4.7635}
    runs["kd"] = _run((100, "other100", 4.9))
    assert demo_results.shared_scores(runs, "heldout") is None
    assert demo_results.shared_scores(runs, "piqa") is None
