"""The live teacher (teacher.checkpoint): its signal against the stored one and float64 math.

References are independent of the code under test: the dump's own extraction
(`teacher_dump.extract_rows`, the path that writes stores) for the top-k and
the hidden state, float64 numpy for the full-vocabulary divergences.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

import teacher_dump
from store import StoreReader, StoreSchema, create_store
from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.training import (
    layer_match,
    live_kd,
    live_teacher,
    loop,
    losses,
    methods,
    phase_loss,
    signals,
    tiled_loss,
)
from trainer.training.config import ConfigError
from trainer.training.signals import Batch

TEACHER = "tiny-7"  # 7 blocks (one global), d=64: another model than the tiny student.
SHA = "ab" * 32  # trainer_testlib.make_store's tokenizer sha256.


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random tiny-7 teacher checkpoint whose logits are peaked enough to matter."""
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    cfg = model_config.get_config(TEACHER, vocab_size=tl.VOCAB)
    params = model.init_params(cfg, jax.random.key(7))
    params["embedding"] = params["embedding"] * 3.0  # Sharper next-token distributions.
    model_io.save_model(path, cfg, params, metadata={"tokenizer_sha256": SHA})
    return str(path)


def _tokens(batch=2, seq=12, seed=0):
    return np.random.default_rng(seed).integers(0, tl.VOCAB, (batch, seq)).astype(np.int32)


def _student():
    cfg = model_config.get_config("tiny", vocab_size=tl.VOCAB)
    return cfg, model.init_params(cfg, jax.random.key(3))


def _config(method="kd", **sets):
    sets = {"store.url": "/nonexistent", "run_dir": "/nonexistent", **sets}
    return tl.tiny_config(method, sets.pop("store.url"), sets.pop("run_dir"), **sets)


def _live_kd(teacher_dir, tokens, **sets):
    """The trainer's KD term (metrics["kd"], and the loss) with the live teacher."""
    config = _config("kd", **{"teacher.checkpoint": teacher_dir, "loss.token_tile": 8, **sets})
    s_cfg, s_params = _student()
    teacher = live_teacher.load(config, _one_device_mesh())
    (phase,) = methods.phases(config, s_cfg.num_layers)
    assert phase.live and phase.fields == ("tokens",)  # Tokens only: nothing else is read.
    _, metrics = phase_loss.batch_loss(
        s_params,
        {},
        Batch(tokens=jnp.asarray(tokens)),
        jnp.int32(0),
        phase=phase,
        config=config,
        model_cfg=s_cfg,
        num_steps=10,
        teacher_params=teacher.params,
        teacher_cfg=teacher.model_cfg,
    )
    return metrics, s_cfg, s_params


def _one_device_mesh():
    from trainer.training import sharding

    return sharding.make_mesh(devices=jax.devices()[:1])


@pytest.mark.parametrize(
    "tau,tail,divergence", [(1.0, "bucket", "forward_kl"), (0.5, "zero", "jsd")]
)
def test_live_kd_on_teacher_topk_equals_stored_exact_kd(teacher_dir, tau, tail, divergence):
    tokens = _tokens()
    metrics, s_cfg, s_params = _live_kd(
        teacher_dir,
        tokens,
        **{
            "teacher.live_topk": tl.K,
            "loss.tau": tau,
            "loss.tail": tail,
            "loss.divergence": divergence,
        },
    )
    # The dump's extraction of the same teacher (float32 top-k, before any encoding).
    signal = next(teacher_dump.extract_rows(teacher_dump.load_teacher(teacher_dir), tokens, k=tl.K))
    logits = model.unembed(
        s_params, model.forward(s_params, tokens, s_cfg).final_hidden_BxTxD, s_cfg
    )
    stored_kd = losses.kd_topk(
        logits,
        signals.TopkSignal(ids=signal["topk_ids"], logprobs=signal["topk_logprobs"]),
        tau,
        tail=tail,
        divergence=divergence,
    )
    assert abs(float(metrics["kd"]) - float(jnp.mean(stored_kd))) <= 1e-6


def test_live_hidden_equals_stored_exact_hidden(teacher_dir, tmp_path):
    tokens = _tokens(batch=4, seq=tl.SEQ)
    teacher = teacher_dump.load_teacher(teacher_dir)
    signal = next(teacher_dump.extract_rows(teacher, tokens, k=tl.K, layers=(3,)))
    schema = StoreSchema(
        seq_len=tl.SEQ,
        k=tl.K,
        vocab_size=tl.VOCAB,
        hidden_layers=(3,),
        hidden_dim=64,
        rows_per_unit=4,
        profile="exact",
        tokenizer={"sha256": SHA, "vocab_size": tl.VOCAB},
        teacher={"name": TEACHER, "fingerprint": "0" * 64, "d_model": 64, "config": {}},
        packing={"rule": "noam"},
    )
    writer = create_store(str(tmp_path / "s"), schema, num_rows=4)
    writer.write_unit(0, tokens=tokens, **signal)
    stored = StoreReader(str(tmp_path / "s")).read(
        np.arange(4), fields=("hidden/3",), hidden_normalized=True
    )
    (stored_BxTxD,) = [v for k, v in stored.items() if k.startswith("hidden")]
    t_cfg, t_params, _ = model_io.load_model(teacher_dir)
    live = live_teacher.forward(
        t_params, jnp.asarray(tokens), t_cfg, hidden_layers=(3,), logits=False
    )
    assert live.final_BxTxD is None  # Hidden only: no final norm, no logits.
    # The store rounds x/rms(x) (|y| <= sqrt(D) = 8) to float16: 2^-11 relative.
    np.testing.assert_allclose(np.asarray(live.hidden[3]), stored_BxTxD, rtol=0, atol=8 * 2**-11)
    assert np.max(np.abs(np.asarray(live.hidden[3]) - stored_BxTxD)) > 0  # Not the store.


def _np_divergence(s_NxV, t_NxV, tau, divergence):
    def log_softmax(x):
        x = x / tau
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    logq, logp = log_softmax(s_NxV), log_softmax(t_NxV)
    p, q = np.exp(logp), np.exp(logq)
    if divergence == "forward_kl":
        return (p * (logp - logq)).sum(-1)
    if divergence == "reverse_kl":
        return (q * (logq - logp)).sum(-1)
    m = 0.5 * (p + q)
    return 0.5 * (p * (logp - np.log(m))).sum(-1) + 0.5 * (q * (logq - np.log(m))).sum(-1)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_tiled_full_vocab_divergence_matches_float64(teacher_dir, divergence):
    tau = 0.7
    tokens = _tokens(batch=2, seq=10)
    s_cfg, s_params = _student()
    t_cfg, t_params, _ = model_io.load_model(teacher_dir)
    s_final = model.forward(s_params, tokens, s_cfg).final_hidden_BxTxD
    t_final = model.forward(t_params, tokens, t_cfg).final_hidden_BxTxD
    fn = live_kd.live_terms_fn(
        model.embedding_table(t_params),
        nll=False,
        kd=True,
        temperature=tau,
        divergence=divergence,
    )
    # token_tile 8 over B=2: 4 positions per tile, 3 tiles, the last one padded.
    terms = tiled_loss.tiled_logit_losses(
        s_final,
        model.embedding_table(s_params),
        fn,
        {live_kd.TEACHER_HIDDEN: t_final},
        tile_tokens=8,
    )
    s64 = np.asarray(model.unembed(s_params, s_final, s_cfg), np.float64)
    t64 = np.asarray(model.unembed(t_params, t_final, t_cfg), np.float64)
    want = _np_divergence(s64, t64, tau, divergence)
    assert want.mean() > 0.05  # A real gap between the two models.
    np.testing.assert_allclose(np.asarray(terms["kd"]), want, rtol=1e-5, atol=1e-6)


def test_no_gradient_reaches_the_teacher(teacher_dir):
    tokens = _tokens()
    config = _config("hldc", **{"teacher.checkpoint": teacher_dir, "teacher.hidden_layer": 3})
    s_cfg, s_params = _student()
    teacher = live_teacher.load(config, _one_device_mesh())
    (phase,) = methods.phases(config, s_cfg.num_layers)
    reg = layer_match.init_regressor(phase.regressor, jax.random.key(0), 64, 64)

    def loss(t_params):
        return phase_loss.batch_loss(
            s_params,
            reg,
            Batch(tokens=jnp.asarray(tokens)),
            jnp.int32(0),
            phase=phase,
            config=config,
            model_cfg=s_cfg,
            num_steps=10,
            teacher_params=t_params,
            teacher_cfg=teacher.model_cfg,
        )[0]

    grads = jax.grad(loss)(teacher.params)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "sets,needle",
    [
        ({"model.vocab_size": 256}, "vocab_size=512 but model.vocab_size=256"),
        ({"method": "hldc", "teacher.d_model": 32}, "--set teacher.d_model=64"),
        ({"store.tokenizer_sha256": ""}, None),  # Same tokenizer: accepted (control).
    ],
)
def test_mismatched_teacher_is_refused_before_compiling(teacher_dir, tmp_path, sets, needle):
    vocab = sets.get("model.vocab_size", tl.VOCAB)
    store = tl.make_store(tmp_path / "s", num_rows=16, vocab=vocab, k=0, layers=())
    run_dir = tmp_path / "run"
    method = sets.pop("method", "kd")
    config = tl.tiny_config(method, store, run_dir, steps=3, **sets)
    config.teacher.checkpoint = teacher_dir
    if needle is None:  # The checks loop.run makes first pass.
        reader, resolved = loop.open_store(config)
        model_cfg = loop.model_config_from(resolved)
        loop.check_store(
            resolved, reader, model_cfg, methods.phases(resolved, model_cfg.num_layers)
        )
        return
    with pytest.raises(ConfigError) as err:
        loop.run(config)
    line = str(err.value)
    assert needle in line and "\n" not in line and line.startswith("teacher.checkpoint=")
    assert not run_dir.exists()  # Refused before the run dir was owned, so before any compile.


def test_other_tokenizer_is_refused(teacher_dir, tmp_path):
    store = tl.make_store(tmp_path / "s", num_rows=16, k=0, layers=(), tokenizer_sha="cd" * 32)
    line = tl.cli_error_line(store, tmp_path / "run", f"teacher.checkpoint={teacher_dir}")
    assert "trained with tokenizer abababababab" in line and "cdcdcdcdcdcd" in line


def test_live_kd_trains_from_a_tokens_only_store(teacher_dir, tmp_path):
    store = tl.make_store(tmp_path / "s", num_rows=32, k=0, layers=())
    runs = {}
    for charge in (False, True):
        config = tl.tiny_config(
            "kd",
            store,
            tmp_path / f"run{charge}",
            steps=6,
            **{
                "teacher.checkpoint": teacher_dir,
                "teacher.charge_flops": charge,
                "loss.tau": 2.0,
                "loss.divergence": "reverse_kl",
                "log_every": 1,
            },
        )
        summary = loop.run(config)
        runs[charge] = summary
        assert np.isfinite(summary["kd"]) and summary["kd"] > 0
        assert summary["teacher"]["charged"] is charge
        with open(os.path.join(config.run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            last = [json.loads(line) for line in f][-1]
        assert last["teacher_flops_charged"] == float(charge)
        assert last["teacher_flops"] == summary["teacher"]["flops"]
    # Charged, the same budget buys fewer steps; the spent FLOPs include the teacher's.
    free, paid = runs[False], runs[True]
    assert paid["global_step"] < free["global_step"]
    tokens = 8 * tl.SEQ
    per_token = free["teacher"]["flops_per_token"][0]
    assert paid["cumulative_flops"] == pytest.approx(
        paid["global_step"]
        * tokens
        * (free["cumulative_flops"] / (free["global_step"] * tokens) + per_token)
    )


def test_planner_compiles_the_live_teacher_step(teacher_dir, capsys):
    from trainer.plan import __main__ as plan_cli

    argv = ["train", "--config", "tiny:hldc", "--set", f"teacher.checkpoint={teacher_dir}"]
    argv += ["--set", "teacher.hidden_layer=3", "--topology", "v5e:2x2", "--platform", "cpu"]
    assert plan_cli.main([*argv, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    # The teacher's params are arguments of the step (replicated at mesh.fsdp=1).
    teacher_cfg = model_config.get_config(TEACHER, vocab_size=tl.VOCAB)
    teacher_bytes = 4 * flops.param_counts(teacher_cfg)["total_params"]
    assert rep["fits"] and rep["programs"][0]["memory"]["argument_bytes"] > teacher_bytes
