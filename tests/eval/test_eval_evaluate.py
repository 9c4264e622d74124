"""End to end: a tiny random model scored on fixture tasks, documents and a
tokens store, against float64 numpy log-likelihoods computed here.

The model's logits are the ground-truth source; log-softmax, sums, length
normalisation, argmax and windowing are recomputed independently in numpy
on unpadded, unbatched sequences.
"""

import functools
import json
import os
import types

import jax
import numpy as np
import pytest
from eval_fixtures import REQUEST_DOCS

from trainer.evaluate import cli as evaluate_cli
from trainer.evaluate import runner as evaluate
from trainer.evaluate import scoring
from trainer.evaluate import tasks as eval_tasks
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.model.tokenizer import load_tokenizer, tokenizer_info

SEQ_LEN = 32


REF_LEN = 64  # One fixed shape for the reference: a single compile.


@functools.partial(jax.jit, static_argnums=0)
def _ref_logits(cfg, params, tokens_1xT):
    return model.unembed(params, model.forward(params, tokens_1xT, cfg).final_hidden_BxTxD, cfg)


def ref_logprobs(cfg, params, ids):
    """float64 log p(ids[j+1] | ids[:j+1]) and argmax flags, one sequence.

    The sequence is run alone, right-padded to REF_LEN (causal model: padding
    cannot affect earlier positions); everything after the logits is float64 numpy.
    """
    n = len(ids) - 1
    assert n <= REF_LEN
    tokens = np.zeros((1, REF_LEN), np.int32)
    tokens[0, :n] = ids[:-1]
    logits = np.asarray(_ref_logits(cfg, params, tokens), np.float64)[0, :n]
    peak = logits.max(-1, keepdims=True)
    logp = logits - (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))
    targets = np.asarray(ids[1:])
    return logp[np.arange(len(targets)), targets], logits.argmax(-1) == targets


def ref_task(cfg, params, sp, bos, task, root):
    """Expected metrics of a fixture task, from scratch."""
    examples = eval_tasks.load_examples(task, data_root=root)
    per_norm = {"raw": 0, "per_token": 0, "per_char": 0}
    greedy_hits, pair_sums, pair_greedy = 0, [], []
    for ex in examples:
        sums, toks, chars, greedy = [], [], [], []
        for context, continuation in ex.pairs:
            ctx, cont = evaluate.encode_pair(sp, context, continuation, bos)
            assert ctx[0] == bos and ctx[1:] + cont == sp.encode(context + continuation)
            ids = (ctx + cont)[-(SEQ_LEN + 1) :]
            lp, am = ref_logprobs(cfg, params, ids)
            sums.append(lp[-len(cont) :].sum())
            toks.append(min(len(cont), SEQ_LEN))  # long continuations keep their tail
            chars.append(len(continuation))
            greedy.append(bool(am[-len(cont) :].all()))
        sums = np.array(sums)
        pair_sums += list(sums)
        pair_greedy += greedy
        per_norm["raw"] += int(np.argmax(sums) == ex.gold)
        per_norm["per_token"] += int(np.argmax(sums / np.array(toks)) == ex.gold)
        per_norm["per_char"] += int(np.argmax(sums / np.array(chars)) == ex.gold)
        greedy_hits += int(greedy[0])
    n = len(examples)
    return {k: v / n for k, v in per_norm.items()}, greedy_hits / n, (pair_sums, pair_greedy)


@pytest.fixture
def env(tiny_model, tokenizer_path, task_root):
    cfg, params, path = tiny_model
    return types.SimpleNamespace(
        cfg=cfg,
        params=params,
        path=path,
        tok=tokenizer_path,
        sp=load_tokenizer(tokenizer_path),
        root=task_root,
        info=tokenizer_info(tokenizer_path),
    )


@pytest.mark.parametrize("token_tile", [1024, 20])  # 20: several tiles, one padded
def test_pair_scores_match_float64_reference(env, token_tile):
    cfg, params, sp, info = env.cfg, env.params, env.sp, env.info
    fn = scoring.make_token_score_fn(params, cfg, token_tile=token_tile)
    for task in ("hellaswag", "winogrande", "lambada"):
        examples = eval_tasks.load_examples(task, data_root=env.root)
        rows = [
            scoring.pair_row(*evaluate.encode_pair(sp, c, x, info["bos_id"]), SEQ_LEN)
            for ex in examples
            for c, x in ex.pairs
        ]
        got = scoring.score_rows(fn, rows, batch_size=3, max_len=SEQ_LEN)
        _, _, (want_sums, want_greedy) = ref_task(cfg, params, sp, info["bos_id"], task, env.root)
        np.testing.assert_allclose(got.logprob_sum, want_sums, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(got.all_greedy, want_greedy)


def test_evaluate_tasks_and_documents(env, tmp_path):
    cfg, params, sp, info = env.cfg, env.params, env.sp, env.info
    docs = []
    for i, text in enumerate(
        [
            "The cat sat on the mat and looked at the dog. " * 3,
            "Water boils at one hundred degrees.",
        ]
    ):
        docs.append(str(tmp_path / f"doc{i}.txt"))
        open(docs[-1], "w").write(text)
    tasks = list(REQUEST_DOCS)
    out = evaluate.evaluate(
        env.path,
        env.tok,
        tasks,
        docs=docs,
        batch_size=4,
        seq_len=SEQ_LEN,
        stride=12,
        task_dir=env.root,
    )
    for task in tasks:
        accs, greedy, _ = ref_task(cfg, params, sp, info["bos_id"], task, env.root)
        m = out["tasks"][task]
        assert m["n"] == len(REQUEST_DOCS[task])
        if task == "lambada":
            assert m["acc"] == greedy
        else:
            for norm, acc in accs.items():
                assert m[f"acc_{norm}"] == acc, (task, norm)
            assert m["error"] == pytest.approx(1 - accs[m["normalization"]])
    # Documents: independent sliding-window loop (inputs <= SEQ_LEN, step 12).
    nll, count, words, nbytes = 0.0, 0, 0, 0
    for doc in docs:
        text = open(doc).read()
        ids = [info["bos_id"]] + sp.encode(text) + [info["eos_id"]]
        done, begin = 0, 0
        while done < len(ids) - 1:
            end = min(begin + SEQ_LEN, len(ids) - 1)
            lp, _ = ref_logprobs(cfg, params, ids[begin : end + 1])
            new = end - done
            nll -= lp[-new:].sum()
            count += new
            done, begin = end, begin + 12
        words += len(text.split())
        nbytes += len(text.encode())
    d = out["tasks"]["docs"]
    assert count > SEQ_LEN and d["tokens"] == count  # really more than one window
    assert d["log_ppl"] == pytest.approx(nll / count, rel=1e-5)
    assert d["word_log_ppl"] == pytest.approx(nll / words, rel=1e-5)
    assert d["bits_per_byte"] == pytest.approx(nll / nbytes / np.log(2), rel=1e-5)
    assert out["tokens_per_s"] > 0 and out["fingerprint"]


def test_heldout_store(env, tmp_path):
    from store import StoreSchema, create_store

    cfg, params, info = env.cfg, env.params, env.info
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, size=(6, 12)).astype(np.int32)
    url = str(tmp_path / "heldout")
    w = create_store(
        url,
        StoreSchema(
            seq_len=12,
            k=0,
            vocab_size=cfg.vocab_size,
            rows_per_unit=2,
            tokenizer=info,
            packing={"rule": "noam"},
        ),
        num_rows=6,
    )
    for u in range(w.num_units):
        start, stop = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[start:stop])
    out = evaluate.evaluate(env.path, env.tok, ["heldout"], store=url, batch_size=4, limit=5)
    nll = -sum(ref_logprobs(cfg, params, row)[0].sum() for row in tokens[:5])
    m = out["tasks"]["heldout"]
    assert m["tokens"] == 5 * 11 and m["n"] == 5
    assert m["log_ppl"] == pytest.approx(nll / 55, rel=1e-5)


def _heldout_store(path, cfg, info, seq_len, rows=4):
    from store import StoreSchema, create_store

    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, size=(rows, seq_len))
    w = create_store(
        str(path),
        StoreSchema(
            seq_len=seq_len,
            k=0,
            vocab_size=cfg.vocab_size,
            rows_per_unit=2,
            tokenizer=info,
            packing={"rule": "noam"},
        ),
        num_rows=rows,
    )
    for u in range(w.num_units):
        start, stop = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[start:stop].astype(np.int32))
    return str(path)


def test_store_of_another_seq_len_is_refused_unless_asked(env, tmp_path, capsys):
    """The export records the trained T; a held-out store of another T is refused
    (it used to score silently), --seq-len T scores it explicitly."""
    model_dir = str(tmp_path / "export")
    model_io.save_model(
        model_dir, env.cfg, env.params, {"seq_len": 12, "tokenizer_sha256": env.info["sha256"]}
    )
    store16 = _heldout_store(tmp_path / "h16", env.cfg, env.info, 16)
    argv = ["--checkpoint", model_dir, "--tasks", "heldout", "--store", store16]
    assert evaluate_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "T=16 but the model is evaluated at T=12" in err and "--seq-len 16" in err
    assert "\n" not in err
    out = evaluate.evaluate(model_dir, None, ["heldout"], store=store16, seq_len=16)
    assert out["tasks"]["heldout"]["tokens"] == 4 * 15  # no tokenizer needed for heldout
    store12 = _heldout_store(tmp_path / "h12", env.cfg, env.info, 12)
    assert evaluate.evaluate(model_dir, None, ["heldout"], store=store12)["seq_len"] == 12
    with pytest.raises(evaluate.EvalError, match="encode text; pass --tokenizer"):
        evaluate.evaluate(model_dir, None, ["piqa"])


def test_eval_json_merges_tasks_of_the_same_model(env, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(env.path, run_dir / "export")
    monkeypatch.chdir(tmp_path)  # relative --checkpoint and --task-dir
    base = [
        "--checkpoint",
        "run",
        "--tokenizer",
        os.path.relpath(env.tok),
        "--task-dir",
        os.path.relpath(env.root),
        "--seq-len",
        str(SEQ_LEN),
    ]
    assert evaluate_cli.main(base + ["--tasks", "piqa"]) == 0
    first = json.loads((run_dir / "eval.json").read_text())
    assert evaluate_cli.main(base + ["--tasks", "arc_easy"]) == 0
    merged = json.loads((run_dir / "eval.json").read_text())
    assert set(merged["tasks"]) == {"piqa", "arc_easy"}
    assert merged["tasks"]["piqa"] == first["tasks"]["piqa"]
    (run_dir / "eval.json").write_text(
        json.dumps({"fingerprint": "other", "tasks": {"lambada": {"acc": 1.0}}})
    )
    assert evaluate_cli.main(base + ["--tasks", "piqa"]) == 0
    assert set(json.loads((run_dir / "eval.json").read_text())["tasks"]) == {"piqa"}
    assert "held results of another model" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        evaluate_cli.run_cli(["--help"])
    assert "(default: 8)" in capsys.readouterr().out


def test_cli_run_dir_writes_eval_json(env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(env.path, run_dir / "export")
    rc = evaluate_cli.main(
        [
            "--checkpoint",
            str(run_dir),
            "--tokenizer",
            env.tok,
            "--tasks",
            "piqa,arc_easy",
            "--task-dir",
            env.root,
            "--seq-len",
            str(SEQ_LEN),
            "--json",
        ]
    )
    assert rc == 0
    written = json.loads((run_dir / "eval.json").read_text())
    printed = json.loads(capsys.readouterr().out)
    assert written == printed and set(written["tasks"]) == {"piqa", "arc_easy"}
    assert written["seq_len"] == SEQ_LEN


def test_run_dir_seq_len_default(env, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(env.path, run_dir / "export")
    (run_dir / "config.json").write_text(json.dumps({"data": {"seq_len": 24}, "store": {}}))
    out = evaluate.evaluate(str(run_dir), env.tok, ["winogrande"], task_dir=env.root)
    assert out["seq_len"] == 24


@pytest.mark.parametrize(
    "argv_extra, message",
    [
        (["--tasks", "piqa,bogus"], "unknown task 'bogus'"),
        (["--tasks", "heldout"], "needs a tokens store; pass --store"),
        (["--tasks", "piqa", "--task-file", "piqa"], "is not TASK=PATH"),
        (["--tasks", "piqa", "--docs", "/nonexistent/*.txt"], "matches no files"),
        (["--tasks", "piqa,docs"], "task 'docs' needs text files; pass --docs GLOB"),
        (["--tasks", "piqa", "--token-tile", "0"], "token_tile 0 must be >= 1"),
        (["--tasks", "piqa", "--batch-size", "0"], "batch size 0 must be >= 1"),
    ],
)
def test_cli_bad_input_one_line(env, argv_extra, message, capsys):
    rc = evaluate_cli.main(
        ["--checkpoint", env.path, "--tokenizer", env.tok, "--task-dir", env.root, *argv_extra]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err and "Traceback" not in err


def test_vocab_mismatch(env, tmp_path, capsys):
    cfg = model_config.get_config(
        "tiny",
        vocab_size=400,
        num_layers=1,
        d_model=32,
        mlp_dim=32,
        num_heads=1,
        num_kv_heads=1,
        head_dim=8,
    )
    other = str(tmp_path / "other")
    model_io.save_model(other, cfg, model.init_params(cfg, jax.random.PRNGKey(1)))
    rc = evaluate_cli.main(
        ["--checkpoint", other, "--tokenizer", env.tok, "--tasks", "piqa", "--task-dir", env.root]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "vocab_size=400 differs from the tokenizer's 320" in err


def test_run_dir_tokenizer_sha_mismatch(env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(env.path, run_dir / "export")
    (run_dir / "config.json").write_text(json.dumps({"store": {"tokenizer_sha256": "ab" * 32}}))
    rc = evaluate_cli.main(
        [
            "--checkpoint",
            str(run_dir),
            "--tokenizer",
            env.tok,
            "--tasks",
            "piqa",
            "--task-dir",
            env.root,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "differs from the checkpoint's abababababab" in err


def test_missing_checkpoint(env, capsys):
    rc = evaluate_cli.main(
        ["--checkpoint", "/nonexistent/ckpt", "--tokenizer", env.tok, "--tasks", "piqa"]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_run_dir_bad_config(env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(env.path, run_dir / "export")
    (run_dir / "config.json").write_text("[1, 2")
    rc = evaluate_cli.main(
        ["--checkpoint", str(run_dir), "--tokenizer", env.tok, "--tasks", "piqa"]
    )
    assert rc == 2 and "is not a trainer config" in capsys.readouterr().err


@pytest.mark.parametrize("token_tile", [1024, 7])
def test_greedy_continuation_is_all_argmax(env, token_tile):
    """A continuation decoded greedily from the float64 logits must score all-greedy."""
    cfg, params = env.cfg, env.params
    ids = [env.info["bos_id"]] + env.sp.encode("The cat sat on the")
    context_len = len(ids)
    for _ in range(4):
        tokens = np.zeros((1, REF_LEN), np.int32)
        tokens[0, : len(ids)] = ids
        logits = np.asarray(_ref_logits(cfg, params, tokens), np.float64)[0, len(ids) - 1]
        ids.append(int(logits.argmax()))
    greedy = scoring.pair_row(ids[:context_len], ids[context_len:], SEQ_LEN)
    wrong_last = (ids[-1] + 1) % cfg.vocab_size
    other = scoring.pair_row(ids[:context_len], ids[context_len:-1] + [wrong_last], SEQ_LEN)
    fn = scoring.make_token_score_fn(params, cfg, token_tile=token_tile)
    out = scoring.score_rows(fn, [greedy, other], batch_size=2, max_len=SEQ_LEN)
    np.testing.assert_array_equal(out.all_greedy, [True, False])
    want, _ = ref_logprobs(cfg, params, ids)
    assert out.logprob_sum[0] == pytest.approx(want[-4:].sum(), rel=1e-5)
