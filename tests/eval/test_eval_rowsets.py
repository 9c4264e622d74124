"""Scores say what they were computed on, keep other row sets beside them, and carry
standard errors (issue 23 §1). References are computed here in float64 numpy."""

import json
import math
import os

import numpy as np
import pytest
from test_eval_evaluate import SEQ_LEN, env, ref_logprobs  # noqa: F401  (env: fixture)

from store import StoreSchema, create_store
from trainer.evaluate import cli as evaluate_cli
from trainer.evaluate import runner as evaluate
from trainer.training import eval_results


def _store(path, cfg, info, rows=6, T=12, split=None, seed=0):
    tokens = (
        np.random.default_rng(seed).integers(3, cfg.vocab_size, size=(rows, T)).astype(np.int32)
    )
    w = create_store(
        str(path),
        StoreSchema(
            seq_len=T,
            k=0,
            vocab_size=cfg.vocab_size,
            rows_per_unit=2,
            tokenizer=info,
            packing={"rule": "noam"},
        ),
        num_rows=rows,
        split=split,
    )
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[a:b])
    return str(path), tokens


@pytest.fixture
def run_dir(env, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    os.symlink(env.path, d / "export")
    return d


def test_limit_keeps_the_full_set_score_and_both_carry_their_rows(env, run_dir, tmp_path, capsys):
    url, tokens = _store(tmp_path / "h", env.cfg, env.info, split="heldout")
    argv = ["--checkpoint", str(run_dir), "--tasks", "heldout", "--store", url, "--seq-len", "12"]
    assert evaluate_cli.main(argv) == 0
    full = json.loads((run_dir / "eval.json").read_text())["tasks"]["heldout"]
    assert evaluate_cli.main(argv + ["--limit", "4"]) == 0
    err = capsys.readouterr().err
    data = json.loads((run_dir / "eval.json").read_text())
    assert data["tasks"]["heldout"] == full  # the headline stays the full-set score
    by_n = {s["n"]: s for s in data["scores"]["heldout"]}
    assert set(by_n) == {6, 4} and by_n[6]["rows"] != by_n[4]["rows"]
    assert "headline stays the score over n=6" in err
    # Reference: float64 per-row NLL; the ratio estimator's standard error by hand.
    nll = np.array([-ref_logprobs(env.cfg, env.params, row)[0].sum() for row in tokens[:4]])
    t = np.full(4, 11.0)
    r = nll.sum() / t.sum()
    se = math.sqrt(((nll - r * t) ** 2).sum() / 3 / 4) / t.mean()
    s = by_n[4]
    assert s["log_ppl"] == pytest.approx(r, rel=1e-5) and s["log_ppl_se"] == pytest.approx(
        se, rel=1e-4
    )
    assert (s["task"], s["seq_len"], s["store_split"]) == ("heldout", 12, "heldout")
    assert s["fingerprint"] == data["fingerprint"] and len(s["rows"]) == eval_results.DIGEST_CHARS
    # The same rows again: the same digest, replaced in place (no third score).
    assert evaluate_cli.main(argv + ["--limit", "4"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())["scores"]["heldout"]
    assert sorted(x["n"] for x in again) == [4, 6] and {x["rows"] for x in again} == {
        s["rows"],
        full["rows"],
    }


def test_training_store_scored_as_heldout_is_warned(env, tmp_path, capsys):
    for split, warned in (("train", True), ("heldout", False), (None, False)):
        url, _ = _store(tmp_path / f"s_{split}", env.cfg, env.info, split=split)
        out = evaluate.evaluate(env.path, None, ["heldout"], store=url, seq_len=12)
        err = capsys.readouterr().err
        assert ("holds training rows (its manifest says split=train)" in err) is warned, split
        assert out["tasks"]["heldout"]["store_split"] == (split or "unknown")


def test_accuracy_and_its_standard_error_are_printed_as_such(env, capsys):
    result = evaluate_cli.run_cli(
        [
            "--checkpoint",
            env.path,
            "--tokenizer",
            env.tok,
            "--tasks",
            "hellaswag",
            "--task-dir",
            env.root,
            "--seq-len",
            str(SEQ_LEN),
        ]
    )
    s = result["tasks"]["hellaswag"]  # 2 examples in the fixture
    n, acc = s["n"], s["acc"]
    assert s["acc_se"] == pytest.approx(math.sqrt(acc * (1 - acc) / (n - 1)))
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"hellaswag    accuracy={acc:.4f} ± {s['acc_se']:.4f} (SE)  n={n} rows ")
    assert "error=" not in line


def test_task_row_digest_follows_the_examples(env):
    a = evaluate.evaluate(env.path, env.tok, ["hellaswag"], seq_len=SEQ_LEN, task_dir=env.root)
    b = evaluate.evaluate(
        env.path, env.tok, ["hellaswag"], seq_len=SEQ_LEN, task_dir=env.root, limit=1
    )
    c = evaluate.evaluate(env.path, env.tok, ["hellaswag"], seq_len=SEQ_LEN, task_dir=env.root)
    assert (
        a["tasks"]["hellaswag"]["rows"]
        == c["tasks"]["hellaswag"]["rows"]
        != b["tasks"]["hellaswag"]["rows"]
    )


def test_old_eval_json_is_read_and_merged():
    old = {
        "fingerprint": "f",
        "seq_len": 12,
        "tasks": {
            "heldout": {"log_ppl": 4.76, "n": 139},
            "piqa": {"error": 0.3, "acc": 0.7, "n": 10},
        },
    }
    norm = eval_results.normalize(old)
    assert norm["scores"]["heldout"] == [
        {"log_ppl": 4.76, "n": 139, "task": "heldout", "seq_len": 12}
    ]
    new = {
        "fingerprint": "f",
        "tasks": {"heldout": {"log_ppl": 5.12, "n": 100, "rows": "ab", "seq_len": 12}},
    }
    new["scores"] = {"heldout": [new["tasks"]["heldout"]]}
    merged, notes = eval_results.merge(old, new)
    assert merged["tasks"]["heldout"]["log_ppl"] == 4.76 and len(merged["scores"]["heldout"]) == 2
    assert merged["tasks"]["piqa"]["acc"] == 0.7 and len(notes) == 1
    # Comparable only on equal row sets; legacy scores (no digest) only with the same n.
    assert (
        eval_results.comparable(merged["scores"]["heldout"], [{"n": 139, "seq_len": 12}])
        is not None
    )
    assert (
        eval_results.comparable(
            [{"n": 100, "rows": "ab", "seq_len": 12}], [{"n": 100, "rows": "cd", "seq_len": 12}]
        )
        is None
    )
