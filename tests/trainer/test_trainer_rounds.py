"""`python -m trainer.rounds`: on-policy rounds (rollout → score → train) through the store.

A tiny student and teacher (model "tiny", V=512, different inits) and a prompt
store of 8 rows (T=16, 4 rows per unit) made here. Rounds use prompts of 6
tokens, completions of 10, batch 8 (4 per generate / teacher call), 2 student steps
per round.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from store import StoreReader, StoreSchema, create_store
from store.compare import store_differences
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.rounds import driver

V, T, P, ROWS = 512, 16, 6, 8
TOK = {"sha256": "tok-sha", "vocab_size": V, "bos_id": 2, "eos_id": 1, "pad_id": 0}
SETS = ["data.seq_len=16", "data.batch_size=8", "onpolicy.staleness=2", "log_every=1"]


def _save(path, seed, vocab=V, scale=1.0):
    cfg = model_config.get_config("tiny", vocab_size=vocab)
    params = model.init_params(cfg, jax.random.key(seed))
    params["embedding"] = params["embedding"] * scale
    model_io.save_model(path, cfg, params, {"tokenizer_sha256": "tok-sha"})
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    tokens = np.random.default_rng(0).integers(3, V, (ROWS, T)).astype(np.int32)
    schema = StoreSchema(seq_len=T, k=0, vocab_size=V, rows_per_unit=4, tokenizer=TOK)
    w = create_store(str(root / "prompts"), schema, num_rows=ROWS)
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[a:b])
    return dict(
        root=root,
        prompts=str(root / "prompts"),
        student=_save(root / "student", 0),
        teacher=_save(root / "teacher", 1, scale=3.0),
    )


def _rounds(world, work, method="opd", rounds=2, sets=(), **kw):
    return driver.run_rounds(
        f"tiny:{method}",
        [*SETS, *sets],
        world["student"],
        world["teacher"],
        world["prompts"],
        P,
        rounds,
        str(work),
        **{
            "top_k": 50,
            "seed": 3,
            "batch_size": 4,
            "rows_per_unit": 4,
            "log": lambda line: None,
            **kw,
        },
    )


def _losses(work, rounds=2):
    """Every logged step's loss terms, round after round (wall times left out)."""
    out = []
    for r in range(rounds):
        with open(os.path.join(driver.round_dir(str(work), r), "run", "metrics.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                out.append({k: m[k] for k in ("step", "loss", "opd") if k in m})
    return out


@pytest.fixture(scope="module")
def two_rounds(world):
    work = world["root"] / "whole"
    lines: list[str] = []
    done = _rounds(world, work, log=lines.append)
    return work, done, lines


def test_two_rounds_end_to_end(world, two_rounds):
    work, done, lines = two_rounds
    assert [(d["round"], d["stage"]) for d in done] == [
        (r, s) for r in range(2) for s in ("rollouts", "scored", "run")
    ]
    assert len(lines) == 6 and lines[0].startswith("[rounds] round 1/2 rollouts: ")
    rolls = [StoreReader(os.path.join(driver.round_dir(str(work), r), "rollouts")) for r in (0, 1)]
    got = [x.read(np.arange(ROWS), fields=("tokens", "loss_mask")) for x in rolls]
    for g in got:
        assert (g["loss_mask"][:, :P] == 0).all() and (g["loss_mask"][:, P:] == 1).all()
        np.testing.assert_array_equal(g["tokens"][:, :P], got[0]["tokens"][:, :P])
    # Round 1's student is round 0's trained export: other completions of the same prompts.
    assert (got[0]["tokens"][:, P:] != got[1]["tokens"][:, P:]).any()
    scored = StoreReader(os.path.join(driver.round_dir(str(work), 1), "scored"))
    assert scored.schema.loss_mask and "token_logprob" in scored.read([0])
    with open(os.path.join(driver.round_dir(str(work), 1), "run", "config.json")) as f:
        config = json.load(f)
    assert config["model"]["init_checkpoint"] == os.path.join(
        driver.round_dir(str(work), 0), "run", "export"
    )
    losses = _losses(work)
    assert [m["step"] for m in losses] == [1, 2, 1, 2]  # onpolicy.staleness steps per round
    assert all(np.isfinite(m["loss"]) and m["loss"] == m["opd"] for m in losses)
    # Staleness 0 (round 0's first step, the rollouts' own student): the stored OPD term is
    # the single-sample estimate from the teacher's float32 token_logprob; the same estimate
    # from the live models' log-probs in float64 (a logit term at i weighs loss_mask[:, i+1]).
    estimate = []
    for path in (world["student"], world["teacher"]):
        cfg, params, _ = model_io.load_model(path)
        hidden = model.forward(params, got[0]["tokens"], cfg).final_hidden_BxTxD
        logits = np.asarray(model.unembed(params, hidden, cfg), np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        estimate.append(np.take_along_axis(logp[:, :-1], got[0]["tokens"][:, 1:, None], -1))
    weights = got[0]["loss_mask"][:, 1:, None]
    reference = ((estimate[0] - estimate[1]) * weights).sum() / weights.sum()
    np.testing.assert_allclose(losses[0]["opd"], reference, rtol=1e-5)
    # Done rounds are not redone; --rounds may grow (here it does not: nothing to do).
    assert _rounds(world, work) == done


def test_a_killed_round_resumes_to_the_same_stores_and_losses(world, two_rounds, monkeypatch):
    whole = two_rounds[0]
    work = world["root"] / "killed"
    from trainer.generate import runner

    generate = runner.rollouts
    stages = dict(driver.STAGE_FNS)

    def killed_between_stages(a, config, r):  # Round 0: rollouts done, before scoring.
        raise KeyboardInterrupt

    monkeypatch.setitem(driver.STAGE_FNS, "scored", killed_between_stages)
    with pytest.raises(KeyboardInterrupt):
        _rounds(world, work)
    monkeypatch.setitem(driver.STAGE_FNS, "scored", stages["scored"])

    def killed_after_one_unit(*args, **kw):  # Round 1's rollouts: one unit of two committed.
        def progress(done, total, tokens):
            if done == 4:
                raise KeyboardInterrupt

        return generate(*args, **{**kw, "progress": progress})

    def round_1_killed(a, config, r):
        if r == 1:
            monkeypatch.setattr(runner, "rollouts", killed_after_one_unit)
        return stages["rollouts"](a, config, r)

    monkeypatch.setitem(driver.STAGE_FNS, "rollouts", round_1_killed)
    with pytest.raises(KeyboardInterrupt):
        _rounds(world, work)
    assert StoreReader(
        os.path.join(driver.round_dir(str(work), 1), "rollouts"), allow_partial=True
    ).committed_units == {0}
    monkeypatch.setattr(runner, "rollouts", generate)
    monkeypatch.setitem(driver.STAGE_FNS, "rollouts", stages["rollouts"])
    _rounds(world, work)
    for r in range(2):
        for stage in ("rollouts", "scored"):
            a, b = (os.path.join(driver.round_dir(str(w), r), stage) for w in (whole, work))
            assert store_differences(a, b) == [], (r, stage)
    assert _losses(work) == _losses(whole)


def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys):
    other = _save(tmp_path / "other_vocab", 2, vocab=256)
    base = [
        "--config", "tiny:opd", *(x for s in SETS for x in ("--set", s)),
        "--student", world["student"], "--teacher", world["teacher"],
        "--prompts", world["prompts"], "--prompt-len", str(P), "--rounds", "1",
        "--work", str(tmp_path / "w"),
    ]  # fmt: skip

    def rc(*change, **replace):
        argv = list(base)
        for flag, value in replace.items():
            argv[argv.index("--" + flag.replace("_", "-")) + 1] = value
        if not replace:
            argv[argv.index("onpolicy.staleness=2")] = "onpolicy.staleness=1"
        return driver.main([*argv, *change])

    cases = [
        (dict(teacher=other), "another vocabulary"),
        (dict(student=str(tmp_path / "missing")), "does not exist"),
        (dict(config="tiny:kd"), "not on-policy"),
        (dict(prompt_len="16"), "leaves no completion"),
        (dict(prompts=str(tmp_path / "missing")), "store"),
        (dict(), "warmup_steps=2"),  # --set onpolicy.staleness=1: fewer steps than warm-up.
    ]
    for replace, match in cases:
        assert rc(**replace) == 2, match
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err
    assert not os.path.exists(tmp_path / "w" / driver.LEDGER)  # Nothing written before these.


def test_other_settings_in_a_work_dir_are_refused(world, two_rounds, capsys):
    with pytest.raises(driver.RoundsError, match="other settings .*seed"):
        _rounds(world, two_rounds[0], sets=(), seed=4)


def test_an_on_policy_method_on_a_store_without_loss_mask_is_refused(world, capsys):
    from trainer.__main__ import main as train

    rc = train(
        [
            "--config",
            "tiny:oprd",
            *(x for s in SETS for x in ("--set", s)),
            "--set",
            f"store.url={world['prompts']}",
            "--set",
            f"run_dir={world['root'] / 'nomask'}",
            "--set",
            f"teacher.checkpoint={world['teacher']}",  # Live: the store needs tokens only.
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no loss_mask" in err, err


def test_at_staleness_0_the_store_and_the_live_teacher_give_the_same_loss(world):
    """OPRD (the hidden term, exact profile): round 0's first step through the store equals
    the same step with the live teacher on the same rollouts, from the same student."""
    from trainer.training import config as config_lib
    from trainer.training import loop

    work = world["root"] / "oprd"
    one_step = ("onpolicy.staleness=1", "optim.warmup_steps=0")
    _rounds(world, work, method="oprd", rounds=1, sets=one_step)
    here = driver.round_dir(str(work), 0)
    live = config_lib.load_config(
        "tiny:oprd",
        [
            *SETS,
            *one_step,
            f"store.url={os.path.join(here, 'rollouts')}",
            f"run_dir={world['root'] / 'live'}",
            f"teacher.checkpoint={world['teacher']}",
            f"model.init_checkpoint={world['student']}",
        ],
    )
    live.budget.unit, live.budget.value = (
        "flops",
        1.5
        * loop.phase_flops_per_token(
            live, loop.model_config_from(live), loop.methods.phases(live, 4)[0]
        )
        * (8 * T),
    )
    loop.run(live)
    with open(os.path.join(here, "run", "metrics.jsonl")) as f:
        stored = json.loads(f.readline())
    with open(world["root"] / "live" / "metrics.jsonl") as f:
        direct = json.loads(f.readline())
    assert stored["step"] == direct["step"] == 1
    np.testing.assert_allclose(stored["hidden_mse"], direct["hidden_mse"], rtol=1e-5)
    np.testing.assert_allclose(stored["loss"], direct["loss"], rtol=1e-5)


def _logp64(path, tokens):
    """float64 log-softmax of a saved model's next-token logits on `tokens`: [B, T, V]."""
    cfg, params, _ = model_io.load_model(path)
    hidden = model.forward(params, tokens, cfg).final_hidden_BxTxD
    logits = np.asarray(model.unembed(params, hidden, cfg), np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_live_rounds_train_on_the_rollouts_with_the_live_teacher(world):
    """--live: rollouts → run, no scoring stage; the trainer runs --teacher on the rollouts.

    Round 0's first step (staleness 0) is the exact reverse KL over the full vocabulary,
    checked against float64 log-softmaxes of the two saved models on the rollouts."""
    work = world["root"] / "live_rounds"
    lines: list[str] = []
    done = _rounds(world, work, live=True, log=lines.append)
    assert [(d["round"], d["stage"]) for d in done] == [
        (r, s) for r in range(2) for s in ("rollouts", "run")
    ]
    assert len(lines) == 4 and "round 2/2 run" in lines[-1]
    here = [driver.round_dir(str(work), r) for r in (0, 1)]
    assert not any(os.path.exists(os.path.join(h, "scored")) for h in here)
    assert all(d["teacher_flops"] > 0 for d in done if d["stage"] == "run")
    with open(os.path.join(here[1], "run", "config.json")) as f:
        config = json.load(f)
    assert config["teacher"]["checkpoint"] == world["teacher"]
    assert config["store"]["url"].rstrip("/").endswith(os.path.join("round-001", "rollouts"))
    assert config["model"]["init_checkpoint"] == os.path.join(here[0], "run", "export")
    losses = _losses(work)
    assert [m["step"] for m in losses] == [1, 2, 1, 2]
    rows = StoreReader(os.path.join(here[0], "rollouts")).read(
        np.arange(ROWS), fields=("tokens", "loss_mask")
    )
    q, p = (_logp64(world[m], rows["tokens"]) for m in ("student", "teacher"))
    kl_BxT = (np.exp(q) * (q - p)).sum(-1)[:, :-1]  # Position i predicts token i+1.
    weights = rows["loss_mask"][:, 1:]
    reference = (kl_BxT * weights).sum() / weights.sum()
    np.testing.assert_allclose(losses[0]["opd"], reference, rtol=1e-4)
    assert _rounds(world, work, live=True) == done  # Finished: nothing redone.
    with pytest.raises(driver.RoundsError, match="other settings .*live"):
        _rounds(world, work)  # The same work dir through the store: refused.


def test_live_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys):
    base = [
        "--config", "tiny:opd", *(x for s in SETS for x in ("--set", s)),
        "--student", world["student"], "--teacher", world["teacher"],
        "--prompts", world["prompts"], "--prompt-len", str(P), "--rounds", "1",
        "--work", str(tmp_path / "w"), "--live",
    ]  # fmt: skip
    cases = [
        (["--", "--runner", "DirectRunner"], "--live has no scoring stage"),
        (["--set", f"teacher.checkpoint={world['teacher']}"], "drop --set teacher.checkpoint"),
        (["--set", "loss.signal=sampled", "--config", "tiny:oprd"], "loss.signal=sampled"),
    ]
    for extra, match in cases:
        assert driver.main([*base, *extra]) == 2, match
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err
    assert not os.path.exists(tmp_path / "w" / driver.LEDGER)
