"""loss.signal=sampled through the trainer: config, store alignment, phases, loss_fn, guard."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from store import SchemaMismatchError, StoreSchema
from store import objective_penalty as penalty_lib
from trainer.training import config as config_lib
from trainer.training import data, decode, layer_match, methods, metrics, phase_loss, store_align
from trainer.training import loop as train

S = 6


def _config(method="kd", **sets):
    return tl.tiny_config(method, "/unused", "/unused", **sets)


def _schema(k=tl.K, samples=S):
    return StoreSchema(
        seq_len=tl.SEQ,
        k=k,
        vocab_size=tl.VOCAB,
        hidden_layers=(tl.LAYER,),
        hidden_dim=64,
        samples=samples,
    )


def sampled_batch(config, seed=0, samples=S, hidden_dim=0):
    """A synthetic batch with the three sampled/* arrays, as the loader ships them."""
    b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
    batch = data.synthetic_batch(
        b, t, v, k=0, hidden_dim=hidden_dim, seed=seed, hidden_layer=config.teacher.hidden_layer
    )
    rng = np.random.default_rng(seed + 1)
    logits_NxV = rng.normal(size=(b * t, v)) * 2.0
    logp_NxV = logits_NxV - np.log(np.exp(logits_NxV).sum(-1, keepdims=True))
    ids, counts, lps = (
        x.reshape(b, t, samples) for x in tl.draw_sampled(logp_NxV, samples, seed + 2)
    )
    batch.update(
        {
            "sampled/ids": ids.astype(np.uint16),
            "sampled/counts": counts,
            "sampled/logprobs": lps.astype(np.float16),
        }
    )
    return batch


def test_default_config_is_topk_and_sampled_settings_are_validated():
    config = _config()
    assert config.loss.signal == "topk" and config.data.samples == 0
    config_lib.validate(config)
    config_lib.validate(_config(**{"loss.signal": "sampled"}))  # tail=bucket is inert there
    for sets, match in [
        ({"loss.signal": "sampled", "loss.tau": 2.0}, "loss.tau=2 with loss.signal=sampled"),
        ({"loss.signal": "sampled", "loss.divergence": "jsd"}, "loss.divergence=jsd"),
        ({"loss.signal": "logits"}, "loss.signal: unknown KD signal 'logits'"),
        ({"data.samples": 256}, r"data.samples=256 must be in \[0, 255\]"),
    ]:
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.validate(_config(**sets))


def test_store_align_names_each_signal_mismatch_with_its_fix():
    url = "/s"
    with pytest.raises(
        config_lib.ConfigError,
        match=r"loss.signal=sampled needs sampled teacher "
        r"logits but store /s has none \(samples=0\).*--set loss.signal=topk",
    ):
        store_align.check_store(
            _config(**{"loss.signal": "sampled"}), _schema(samples=0), url, True, False
        )
    with pytest.raises(
        config_lib.ConfigError,
        match=r"has k=0.*--set loss.signal=sampled "
        r"\(the store holds S=6",
    ):
        store_align.check_store(_config(), _schema(k=0), url, True, False)
    config = _config(**{"loss.signal": "sampled", "data.samples": 8})
    with pytest.raises(
        SchemaMismatchError,
        match=r"data.samples=8 but the store has 6 "
        r"\(--set data.samples=6\)",
    ):
        store_align.check_store(config, _schema(), url, True, False)
    # data.samples=0 accepts any S; data.k is not checked for the sampled signal.
    store_align.check_store(
        _config(**{"loss.signal": "sampled", "data.k": 99}), _schema(), url, True, False
    )
    # NLL reads no logit signal: nothing to refuse.
    store_align.check_store(
        _config("nll", **{"loss.signal": "sampled"}), _schema(samples=0), url, False, False
    )


def test_from_store_picks_the_only_signal_the_store_holds():
    config = _config(**{"data.from_store": True})
    resolved = store_align.resolve(config, _schema(k=0), True, False)
    assert resolved.loss.signal == "sampled" and resolved.data.samples == S
    assert config.loss.signal == "topk"  # the user's config is never written to
    assert store_align.geometry_changes(config, _schema(k=0), True, False)["loss.signal"] == (
        "topk",
        "sampled",
    )
    config = _config(**{"loss.signal": "sampled", "data.from_store": True})
    resolved = store_align.resolve(config, _schema(samples=0), True, False)
    assert resolved.loss.signal == "topk" and resolved.data.k == tl.K
    # Both stored: ambiguous, the config's choice stands.
    for signal in ("topk", "sampled"):
        config = _config(**{"loss.signal": signal, "data.from_store": True})
        assert store_align.resolve(config, _schema(), True, False).loss.signal == signal


def test_resolved_config_is_frozen_and_a_copy():
    config = _config(**{"data.from_store": True, "data.k": 0})
    resolved = store_align.resolve(config, _schema(samples=0), True, False)
    assert resolved.data.k == tl.K and config.data.k == 0
    with pytest.raises(AttributeError, match="immutable"):
        resolved.data.k = 3
    # Without data.from_store the store changes nothing (check_store compares instead).
    config = _config(**{"data.k": 0})
    assert store_align.resolve(config, _schema(samples=0), True, False).data.k == 0


@pytest.mark.parametrize(
    "method,index,hidden", [("kd", 0, False), ("hldc", 0, True), ("hldf", 1, False)]
)
def test_phases_read_the_sampled_field(method, index, hidden):
    config = _config(method, **{"loss.signal": "sampled"})
    phase = methods.phases(config, 4)[index]
    assert phase.fields == ("tokens", "sampled") + (("hidden/2",) if hidden else ())
    assert methods.phases(_config(method), 4)[index].fields[1] == "topk"


def test_loss_fn_composes_the_sampled_kd_term():
    config = _config("hldc", **{"loss.signal": "sampled", "loss.alpha": 0.6})
    model_cfg = train.model_config_from(config)
    phase = methods.phases(config, model_cfg.num_layers)[0]
    params = train.model.init_params(model_cfg, jax.random.key(0))
    regressor = layer_match.init_regressor(
        phase.regressor, jax.random.key(1), model_cfg.d_model, 64
    )
    batch = {k: jnp.asarray(v) for k, v in sampled_batch(config, hidden_dim=64).items()}
    batch = {
        k: batch[k] for k in decode.BatchSpec(encoding=decode.EXACT, fields=phase.fields).names
    }
    fn = jax.jit(
        jax.value_and_grad(
            lambda p: phase_loss.loss_fn(
                p,
                regressor,
                batch,
                jnp.int32(0),
                phase=phase,
                config=config,
                model_cfg=model_cfg,
                num_steps=10,
            ),
            has_aux=True,
        )
    )
    (loss, metrics), grads = fn(params)
    want = 0.4 * metrics["nll"] + 0.6 * metrics["kd"] + 0.1 * metrics["hidden_mse"]
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    # An untrained student is far from a sharp teacher: KL ~ log V-ish, not 0.
    assert 1.0 < float(metrics["kd"]) < 20.0
    assert 0.0 <= float(metrics["top1_agreement"]) <= 1.0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))


def test_guard_reports_zero_penalty_for_sampled_without_reading_the_store():
    config = _config(**{"loss.signal": "sampled"})
    phases = methods.phases(config, 4)
    summary = methods.objective_penalty(config, reader=None, phases=phases)
    assert summary["penalty_nats"] == 0.0 and not summary["warn"]
    assert summary["signal"] == "sampled"
    line = penalty_lib.describe(summary)
    assert "sampled signal: unbiased, exactly 0" in line and "0.0000 nats/token" in line


def test_resume_of_a_run_from_before_loss_signal_is_accepted(tmp_path):
    config = _config()
    config.run_dir = str(tmp_path)
    old = json.loads(config_lib.to_json(config))
    del old["loss"]["signal"], old["data"]["samples"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "1").mkdir()
    config_lib.check_same_config_on_resume(config, str(tmp_path))  # same settings as before
    config.loss.signal = "sampled"
    with pytest.raises(config_lib.ConfigError, match=r"loss.signal: 'topk' -> 'sampled'"):
        config_lib.check_same_config_on_resume(config, str(tmp_path))


# lean, k=0 with sampled logits is the store/lean.py sub-1 KB/token profile (ids bit-packed).
@pytest.mark.parametrize("profile", ["exact", "lean"])
def test_tiny_kd_run_from_a_sampled_only_store(profile, tmp_path):
    store = tl.make_store(
        tmp_path / "store", num_rows=32, k=0, layers=(), samples=S, profile=profile
    )
    config = tl.tiny_config(
        "kd", store, tmp_path / "run", steps=6, log_every=1, **{"data.from_store": True}
    )
    summary = train.run(config)
    assert summary["global_step"] == 6
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"]["signal"] == "sampled" and saved["data"]["samples"] == S
    records = metrics.read_metrics(str(tmp_path / "run"))
    assert all(np.isfinite(r["kd"]) and 0.0 <= r["top1_agreement"] <= 1.0 for r in records)
    assert records[-1]["kd"] < records[0]["kd"]  # the student moves toward the teacher
    penalty = json.loads((tmp_path / "run" / "objective_penalty.json").read_text())
    assert penalty["signal"] == "sampled" and penalty["penalty_nats"] == 0.0


def test_cli_sampled_signal_on_a_topk_store_is_one_line_exit_2(tmp_path):
    store = tl.make_store(tmp_path / "store", num_rows=16, layers=())
    line = tl.cli_error_line(store, tmp_path / "run", "loss.signal=sampled")
    assert "(samples=0)" in line and "--set loss.signal=topk (the store holds top-8)" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
