"""trainer.report compares scores only on equal row sets (issue 23 §1): the numbers are the
issue's own (HLDC 4.7635 over 139 rows, 5.1235 over 100; KD 4.7900 over 139)."""

import json

from test_eval_report import make_run

from trainer import report
from trainer.report import compare, markdown, rundirs

FULL, FIRST100 = "f" * 16, "1" * 16


def _scores(path, heldout, errors=None):
    """Rewrites RUN/eval.json with scores: heldout [(n, rows, log_ppl)], errors {task: [(n, rows, err)]}."""
    scores = {
        "heldout": [
            {"task": "heldout", "n": n, "rows": rows, "seq_len": 32, "log_ppl": v}
            for n, rows, v in heldout
        ]
    }
    for task, lst in (errors or {}).items():
        scores[task] = [
            {"task": task, "n": n, "rows": rows, "seq_len": 32, "error": e, "acc": 1 - e}
            for n, rows, e in lst
        ]
    tasks = {t: max(lst, key=lambda s: s["n"]) for t, lst in scores.items()}
    with open(f"{path}/eval.json", "w") as f:
        json.dump({"fingerprint": "x", "tasks": tasks, "scores": scores}, f)


def _runs(tmp_path, hldc_heldout, hldc_errors=None, kd_errors=None):
    kd = make_run(tmp_path, "kd", "kd", 1e-4, log_ppl=0.0)
    hldc = make_run(tmp_path, "hldc", "hldc", 1e-4, log_ppl=0.0)
    _scores(kd, [(139, FULL, 4.7900)], kd_errors)
    _scores(hldc, hldc_heldout, hldc_errors)
    return rundirs.load_runs([kd, hldc])


def test_a_pair_on_different_rows_gets_no_delta(tmp_path):
    runs = _runs(tmp_path, [(100, FIRST100, 5.1235)])
    assert compare.kd_pairs(runs) == {}
    assert [(r.name, k.name) for r, k in compare.refused_pairs(runs)["hldc"]] == [("hldc", "kd")]
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "kd"), str(tmp_path / "hldc"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| HLDC | 0 | – | – | – | – | – | 1: hldc/kd |" in md
    # Two methods scored on different held-out rows in one table: each cell says which set.
    assert "| 4.7900 [A] |" in md and "| 5.1235 [B] |" in md
    assert (
        "heldout scored on different row sets, not comparable across them: [A] n=139 rows ffffffff; "
        "[B] n=100 rows 11111111." in md
    )


def test_the_delta_uses_the_rows_both_were_scored_on(tmp_path):
    # HLDC was scored on all rows, then with --limit 100: both scores are kept; the pair uses the full set.
    runs = _runs(tmp_path, [(139, FULL, 4.7635), (100, FIRST100, 5.1235)])
    ((run, kd),) = compare.kd_pairs(runs)["hldc"]
    assert compare.pair_log_ppls(run, kd) == (4.7635, 4.7900)  # Δ = +0.0265, not -0.3335


def test_mean_error_averages_only_the_tasks_every_row_shares(tmp_path):
    five = {t: [(10, FULL, e)] for t, e in zip(rundirs.ERROR_TASKS, (0.6, 0.3, 0.5, 0.5, 0.9))}
    two = {"hellaswag": [(10, FULL, 0.7)], "piqa": [(10, FULL, 0.4)]}
    runs = _runs(tmp_path, [(139, FULL, 4.7635)], hldc_errors=five, kd_errors=two)
    assert compare.mean_error_tasks(runs) == ["hellaswag", "piqa"]
    out = tmp_path / "out"
    markdown.build_report([r.path for r in runs], str(out))
    md = (out / "report.md").read_text()
    assert "mean err % (hellaswag, piqa)" in md
    assert "| 60.0 | 30.0 | 50.0 | 50.0 | 90.0 | 45.0 |" in md  # (60 + 30) / 2, not the 5-task 56.0
    assert "| 70.0 | 40.0 | – | – | – | 55.0 |" in md
    # Δ err: on the two shared tasks with the same rows: ((70-60) + (40-30)) / 2 = +10 points.
    assert "+10.00 (1 pairs)" in md


def test_a_run_on_other_rows_than_its_method_is_not_ranked(tmp_path):
    a = make_run(tmp_path, "kd_a", "kd", 1e-4, log_ppl=0.0)
    b = make_run(tmp_path, "kd_b", "kd", 4e-4, log_ppl=0.0)
    c = make_run(tmp_path, "kd_c", "kd", 16e-4, log_ppl=0.0)
    _scores(a, [(139, FULL, 4.80)])
    _scores(b, [(139, FULL, 4.79)])
    _scores(c, [(100, FIRST100, 4.50)])  # lower, but over other rows
    runs = rundirs.load_runs([a, b, c])
    assert [r.name for r in compare.best_per_method(runs)] == ["kd_b"]
    assert [r.name for r in compare.unranked(runs)] == ["kd_c"]


def test_the_figures_plot_the_delta_of_the_table(tmp_path, monkeypatch):
    # The histogram and scatter showed the Δ of unlike rows. Here KD was scored on the
    # first 100 rows only and HLDC on all 139 (its headline) and on those 100: the pair's Δ is
    # on the 100 rows, 4.8000 − 5.1235 = −0.3235 (the headlines would give +0.0365).
    import matplotlib.axes

    drawn = {}
    hist, scatter = matplotlib.axes.Axes.hist, matplotlib.axes.Axes.scatter

    def record_hist(ax, x, *a, **k):
        drawn["hist"] = list(x)
        return hist(ax, x, *a, **k)

    def record_scatter(ax, x, y, *a, **k):
        drawn["scatter"] = (list(x), list(y))
        return scatter(ax, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", record_hist)
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", record_scatter)
    kd = make_run(tmp_path, "kd", "kd", 1e-4, log_ppl=0.0)
    hldc = make_run(tmp_path, "hldc", "hldc", 1e-4, log_ppl=0.0)
    _scores(kd, [(100, FIRST100, 4.8000)])
    _scores(hldc, [(139, FULL, 4.7635), (100, FIRST100, 5.1235)])
    out = tmp_path / "out"
    markdown.build_report([kd, hldc], str(out))
    md = (out / "report.md").read_text()
    assert "| HLDC | 1 | -0.3235 | -0.3235 | -0.3235 | 0/1 |" in md
    assert [round(d, 6) for d in drawn["hist"]] == [-0.3235]
    assert drawn["scatter"] == ([4.8], [5.1235])
    assert (out / "improvement_hldc.png").exists() and (out / "scatter_hldc_vs_kd.png").exists()
