"""`python -m trainer.generate`: rollouts from a checkpoint into a rollout store or JSON lines.

A two-block student (local window 4, then global; V=64) and a tokens store of
10 rows (T=12, 4 rows per unit) it makes itself. Every run uses batch 4,
prompt width 5 and 6 new tokens, so the generation compiles once per sampling.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from store import StoreReader, StoreSchema, create_store
from store.compare import store_differences
from trainer.generate import runner
from trainer.model import gemma3 as model
from trainer.model import generate as gen
from trainer.model import model_config, model_io
from trainer.model.sampling import SamplingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V, T, P, N, ROWS = 64, 12, 5, 6, 10
TOK = {"sha256": "tok-sha", "vocab_size": V, "bos_id": 2, "eos_id": 1, "pad_id": 0}
SAMPLING = SamplingConfig(temperature=1.0, top_k=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{"ckpt", "store", "tokens", "cfg", "params"}: a checkpoint and a prompt store."""
    root = tmp_path_factory.mktemp("gen")
    cfg = model_config.get_config("tiny-7", num_layers=2, global_every=2, vocab_size=V)
    params = model.init_params(cfg, jax.random.key(0))
    model_io.save_model(root / "ckpt", cfg, params, {"tokenizer_sha256": "tok-sha"})
    tokens = np.random.default_rng(0).integers(3, V, (ROWS, T)).astype(np.int32)
    tokens[1, 2:] = 0  # row 1: a 2-token prompt, then padding
    schema = StoreSchema(seq_len=T, k=0, vocab_size=V, rows_per_unit=4, tokenizer=TOK)
    w = create_store(str(root / "prompts"), schema, num_rows=ROWS)
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[a:b])
    return dict(
        root=root,
        ckpt=str(root / "ckpt"),
        store=str(root / "prompts"),
        tokens=tokens,
        cfg=cfg,
        params=params,
    )


def _run(world, out, **kw):
    args = dict(
        store=world["store"],
        prompt_len=P,
        out=out,
        sampling=SAMPLING,
        seed=5,
        batch_size=4,
        rows_per_unit=4,
        progress=lambda *a: None,
    )
    return runner.rollouts(world["ckpt"], N, **{**args, **kw})


def test_store_rollouts_are_prompt_completion_rows_with_a_loss_mask(world, tmp_path):
    out = str(tmp_path / "roll")
    summary = _run(world, out)
    r = StoreReader(out)
    assert r.schema.loss_mask and r.schema.seq_len == P + N and r.num_rows == ROWS
    got = r.read(np.arange(ROWS), fields=("tokens", "loss_mask"))
    lengths = np.array([2 if n == 1 else P for n in range(ROWS)])
    prompts = world["tokens"][:, :P].copy()
    ref = gen.generate(
        world["params"], prompts, lengths, np.arange(ROWS), world["cfg"], N, SAMPLING, seed=5
    )
    for n, p in enumerate(lengths):
        np.testing.assert_array_equal(got["tokens"][n, :p], prompts[n, :p])
        np.testing.assert_array_equal(
            got["tokens"][n, p : p + N], np.asarray(ref.completions_BxN)[n]
        )
        assert (got["tokens"][n, p + N :] == 0).all()
        np.testing.assert_array_equal(
            got["loss_mask"][n], (np.arange(P + N) >= p) & (np.arange(P + N) < p + N)
        )
    assert summary["rows"] == ROWS and summary["generated_tokens"] == ROWS * N
    assert summary["units_written"] == 3 and summary["tokens_per_s"] > 0
    # FLOPs: per row a prefill of its prompt, then N - 1 KV-cache steps (trainer.flops).
    from trainer import flops

    expected = sum(flops.generation_flops(world["cfg"], int(p), N)["total"] for p in lengths)
    assert summary["flops"] == pytest.approx(expected)


def test_a_killed_run_resumes_to_the_same_store(world, tmp_path):
    whole = str(tmp_path / "whole")
    _run(world, whole)
    killed = str(tmp_path / "killed")

    def die_after_first_unit(done, total, tokens):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(world, killed, progress=die_after_first_unit)
    assert StoreReader(killed, allow_partial=True).committed_units == {0}
    summary = _run(world, killed)
    assert summary["units_written"] == 2  # units 1 and 2; unit 0 kept
    assert store_differences(whole, killed) == []
    # The same command with another seed would mix two rollouts in one store: refused.
    rc = runner.main(
        [
            "--checkpoint",
            world["ckpt"],
            "--store",
            world["store"],
            "--prompt-len",
            str(P),
            "--max-new-tokens",
            str(N),
            "--top-k",
            "20",
            "--seed",
            "6",
            "--batch-size",
            "4",
            "--rows-per-unit",
            "4",
            "--out",
            killed,
        ]
    )
    assert rc == 2


def test_jsonl_output_and_the_module_entry_point(world, tmp_path):
    out = tmp_path / "roll.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.generate",
            "--checkpoint",
            world["ckpt"],
            "--store",
            world["store"],
            "--prompt-len",
            str(P),
            "--max-new-tokens",
            str(N),
            "--top-k",
            "20",
            "--seed",
            "5",
            "--batch-size",
            "4",
            "--limit",
            "6",
            "--out-jsonl",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["rows"] == 6 and summary["out_jsonl"] == str(out)
    assert "[generate] 6/6 rows" in proc.stderr and "tok/s" in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(6))
    assert records[1]["prompt"] == world["tokens"][1, :2].tolist()
    assert all(len(r["completion"]) == N and len(r["logprobs"]) == N for r in records)
    assert all(max(r["logprobs"]) <= 0 for r in records)


def _argv(world, tmp_path, **change):
    args = {
        "--checkpoint": world["ckpt"],
        "--store": world["store"],
        "--prompt-len": str(P),
        "--max-new-tokens": str(N),
        "--out-jsonl": str(tmp_path / "o.jsonl"),
    }
    args.update(change)
    return [x for k, v in args.items() if v is not None for x in ((k,) if v is True else (k, v))]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"--store": None}, "pass prompts"),
        ({"--prompt-len": None}, "needs --prompt-len"),
        ({"--prompts": "p.txt"}, "pass prompts"),
        ({"--out-jsonl": None}, "pass one output"),
        ({"--checkpoint": "/nonexistent/ckpt"}, "does not exist"),
        ({"--prompt-len": "13"}, r"outside the store's rows \(T=12\)"),
        ({"--temperature": "-1"}, "temperature=-1.0 must be"),
        ({"--top-p": "0"}, "top_p=0.0 must be"),
        ({"--max-new-tokens": "0"}, "max_new_tokens=0"),
        ({"--batch-size": "0"}, "must be >= 1"),
        ({"--store": "/nonexistent/store"}, "store"),
        ({"--max-new-tokens": "x"}, "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys, change, match):
    try:
        rc = runner.main(_argv(world, tmp_path, **change))
    except SystemExit as e:  # argparse's own errors (a malformed value)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(match, err), err


def test_prompts_of_another_tokenizer_are_refused(world, tmp_path, capsys):
    other = StoreSchema(
        seq_len=T, k=0, vocab_size=V, rows_per_unit=4, tokenizer={**TOK, "sha256": "other-sha"}
    )
    w = create_store(str(tmp_path / "other"), other, num_rows=4)
    w.write_unit(0, tokens=world["tokens"][:4])
    assert runner.main(_argv(world, tmp_path, **{"--store": str(tmp_path / "other")})) == 2
    assert "tokenizer sha256" in capsys.readouterr().err
    wide = StoreSchema(seq_len=T, k=0, vocab_size=V * 2, rows_per_unit=4)
    w = create_store(str(tmp_path / "wide"), wide, num_rows=4)
    w.write_unit(0, tokens=world["tokens"][:4])
    assert runner.main(_argv(world, tmp_path, **{"--store": str(tmp_path / "wide")})) == 2
    assert "vocab_size=64 differs" in capsys.readouterr().err


def test_text_prompts_with_the_tokenizer(tmp_path, wiki_tokenizer, capsys):
    from trainer.model.tokenizer import tokenizer_info

    _, spm = wiki_tokenizer
    info = tokenizer_info(spm)
    cfg = model_config.get_config(
        "tiny-7", num_layers=2, global_every=2, vocab_size=info["vocab_size"]
    )
    model_io.save_model(
        tmp_path / "ckpt",
        cfg,
        model.init_params(cfg, jax.random.key(1)),
        {"tokenizer_sha256": info["sha256"]},
    )
    (tmp_path / "p.txt").write_text("The city of\n\nA river is\n")
    argv = [
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--prompts",
        str(tmp_path / "p.txt"),
        "--tokenizer",
        spm,
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
        "--out-jsonl",
        str(tmp_path / "o.jsonl"),
    ]
    assert runner.main(argv) == 0
    assert "tokens generated" in capsys.readouterr().out
    records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == [0, 2]  # line numbers key the rows
    assert all(isinstance(r["text"], str) and len(r["completion"]) == 4 for r in records)
    assert records[0]["prompt"][0] == info["bos_id"]
    (tmp_path / "empty.txt").write_text("\n\n")
    assert runner.main(argv[:3] + [str(tmp_path / "empty.txt")] + argv[4:]) == 2
    assert "no non-empty line" in capsys.readouterr().err
    assert runner.main(argv[:4] + argv[6:]) == 2  # --prompts without --tokenizer
    assert "needs --tokenizer" in capsys.readouterr().err


def test_the_rollout_store_is_scored_by_the_dump(world, tmp_path):
    """hd-generate --out, then hd-dump --input-store with the student as its own teacher: rows and
    loss_mask carried over, and the dump's token_logprob of each completion token is the log-prob
    generate reported for it (two code paths: full forward vs prefill + KV-cache steps)."""
    from pipelines import dump

    rollouts = str(tmp_path / "roll")
    _run(world, rollouts)
    scored = str(tmp_path / "scored")
    argv = [
        "--input-store",
        rollouts,
        "--store",
        scored,
        "--teacher",
        world["ckpt"],
        "--k",
        "4",
        "--rows-per-unit",
        "4",
        "--batch-size",
        "4",
        "--progress-interval",
        "0",
    ]
    dump.run_dump(argv)
    got = StoreReader(scored).read(np.arange(ROWS))
    made = StoreReader(rollouts).read(np.arange(ROWS), fields=("tokens", "loss_mask"))
    np.testing.assert_array_equal(got["tokens"], made["tokens"])
    np.testing.assert_array_equal(got["loss_mask"], made["loss_mask"])
    lengths = np.array([2 if n == 1 else P for n in range(ROWS)])
    ref = gen.generate(
        world["params"],
        world["tokens"][:, :P],
        lengths,
        np.arange(ROWS),
        world["cfg"],
        N,
        SAMPLING,
        seed=5,
    )
    for n, p in enumerate(lengths):
        # token_logprob at position t scores token t + 1: completion token j sits at p + j.
        np.testing.assert_allclose(
            got["token_logprob"][n, p - 1 : p + N - 1], np.asarray(ref.logprobs_BxN)[n], atol=1e-4
        )


def test_ctrl_c_says_how_to_resume_and_exits_130(world, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "rollouts", interrupted)
    out = str(tmp_path / "roll")
    assert runner.main(_argv(world, tmp_path, **{"--out-jsonl": None, "--out": out})) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"interrupted: the committed units of {out} are kept; re-run the same command to "
        f"resume (committed units are skipped)"
    )
