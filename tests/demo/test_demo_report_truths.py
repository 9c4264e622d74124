"""The demo report's statements on hand-made numbers: sampled vs top-k KD, the hidden
term's share, a task every model fails reported once as a scoring artefact, and the
stages' wall times with the machine's load."""

from scripts import demo, demo_report, demo_results, demo_stages
from scripts.demo_sizes import get_size


def _cell(err, n=200):
    return demo_results.downstream_cell("piqa", {"error": err, "n": n})


def test_task_below_chance_for_every_model_is_named_once():
    down = {
        "piqa": {"chance": 0.5, "teacher": [_cell(0.62)], "nll": [_cell(0.60), _cell(0.61)]},
        "arc_easy": {"chance": 0.75, "teacher": [_cell(0.30)], "nll": [_cell(0.62), _cell(0.63)]},
    }
    # piqa at 0.60-0.62 error with n=200 is > 2 s.e. worse than chance for every model.
    assert demo_results.below_chance_everywhere(down) == ["piqa"]
    down["piqa"]["nll"][1] = _cell(0.52)  # one model near chance: a per-model finding again
    assert demo_results.below_chance_everywhere(down) == []


def test_downstream_table_drops_the_artefact_row_and_says_why():
    methods = {"teacher": {}, "nll": {}}
    down = {
        "piqa": {"chance": 0.5, "teacher": [_cell(0.62)], "nll": [_cell(0.60)]},
        "winogrande": {"chance": 0.5, "teacher": [_cell(0.49)], "nll": [_cell(0.50)]},
    }
    md = "\n".join(demo_report._downstream_table({"downstream": down, "methods": methods}))
    assert "| piqa |" not in md and "| winogrande |" in md
    assert (
        md.count(
            "piqa (n=200) is left out of the table: every model, the teacher included, "
            "scores worse than chance (errors 60.0–62.0% vs 50% for guessing"
        )
        == 1
    )


def test_sampled_vs_topk_is_paired_by_seed():
    methods = {
        "kd": {"log_ppl": [4.3883, 4.3862], "mean": 4.38725, "spread": 0.0021},
        "kd_topk": {"log_ppl": [4.4018, 4.3990], "mean": 4.4004, "spread": 0.0028},
    }
    c = demo_results.signal_comparison(methods)
    assert abs(c["delta"] - (4.38725 - 4.4004)) < 1e-12
    assert [round(p, 4) for p in c["paired"]] == [-0.0135, -0.0128]
    assert c["bar"] == 0.0028 and c["beyond_spread"] is True
    methods["kd_topk"]["spread"] = 0.02
    assert demo_results.signal_comparison(methods)["beyond_spread"] is False
    assert demo_results.signal_comparison({"kd": methods["kd"]}) is None


def test_share_sentence_states_reduction_share_and_consequence():
    run = {
        "hidden_share": {
            "gamma": 0.1,
            "hidden_reduction": "mean",
            "d_teacher": 128,
            "records": [{"step": 25, "loss_share": 3e-4, "grad_share": 0.004}],
        }
    }
    text = demo_report._share_sentence("hldc", run)
    assert text.startswith(
        "Its hidden term (γ=0.1, loss.hidden_reduction=mean over D=128: the "
        "paper's mean over D of the squared difference of the unit vectors, "
        "in [0, 4/128]) was 0.03% of the loss and 0.4% of the student's "
        "gradient norm at step 25; at that weight HLDC trains as KD"
    )
    run["hidden_share"].update(hidden_reduction="sum", gamma=1.0)
    run["hidden_share"]["records"][0]["loss_share"] = 0.4
    text = demo_report._share_sentence("hldc", run)
    assert "squared distance of the unit vectors, in [0, 4]) was 40% of the loss" in text
    assert "trains as KD" not in text
    assert "not recorded" in demo_report._share_sentence("hldc", {"hidden_share": None})


def test_stage_times_from_new_and_old_markers(tmp_path):
    ctx = demo_stages.Context(size=get_size("ci"), out=str(tmp_path))
    (tmp_path / ".done").mkdir()
    demo.write_marker(str(tmp_path / ".done" / "corpus"), 12.34)
    (tmp_path / ".done" / "teacher").write_text("300.0\n")  # a demo from before JSON markers
    (tmp_path / ".done" / "spine").write_text("")  # made by hand
    times = demo_results.stage_times(ctx, ["corpus", "tokenizer", "spine", "teacher"])
    assert list(times) == ["corpus", "spine", "teacher"]  # finished stages, in stage order
    assert times["corpus"]["wall_s"] == 12.3 and times["corpus"]["load_avg_1m"] >= 0
    assert times["teacher"] == {"wall_s": 300.0, "load_avg_1m": None}
    assert times["spine"] == {"wall_s": None, "load_avg_1m": None}
    line = demo_report._stage_lines(
        {"corpus": {"wall_s": 60.0, "load_avg_1m": 2.5}, "teacher": times["teacher"]}
    )[1]
    assert line.endswith(
        "corpus 60s (load 2.5), teacher 300s. Stages before the report: 360s (6.0 min)."
    )
    assert "spine ?" in demo_report._stage_lines(times)[1]
    assert "Stages before the report" not in demo_report._stage_lines(times)[1]  # one unknown
