"""data.from_store=True says which KD signal it picked, and why."""

import pytest
import trainer_testlib as tl

from store import StoreSchema
from trainer.training import loop as train
from trainer.training import store_align


def _schema(k, samples):
    return StoreSchema(
        seq_len=tl.SEQ,
        k=k,
        vocab_size=tl.VOCAB,
        hidden_layers=(tl.LAYER,),
        hidden_dim=64,
        samples=samples,
    )


@pytest.mark.parametrize(
    "signal, k, samples, want",
    [
        (
            "topk",
            8,
            6,
            "the store holds top-8 and 6 sampled logits per position: loss.signal=topk, "
            "the config's choice (--set loss.signal=sampled for the other)",
        ),
        (
            "sampled",
            8,
            6,
            "loss.signal=sampled, the config's choice (--set loss.signal=topk for the other)",
        ),
        ("topk", 0, 6, "the store holds only sampled logits: loss.signal=sampled"),
        ("sampled", 8, 0, "the store holds only topk logits: loss.signal=topk"),
        ("topk", 0, 0, "the store holds no teacher logits"),
    ],
)
def test_signal_choice_names_the_signal_and_the_reason(signal, k, samples, want):
    config = tl.tiny_config(
        "kd", "/unused", "/unused", **{"loss.signal": signal, "data.from_store": True}
    )
    resolved = store_align.resolve(config, _schema(k, samples), needs_topk=True, needs_hidden=False)
    assert want in store_align.signal_choice(resolved, _schema(k, samples))


class _Stop(Exception):
    pass


def test_from_store_run_prints_the_choice_before_compiling(tmp_path, monkeypatch, capsys):
    store = tl.make_store(tmp_path / "store", num_rows=16, samples=4)

    def no_compile(*args, **kwargs):
        raise _Stop()

    monkeypatch.setattr(train.jax, "jit", no_compile)
    config = tl.tiny_config(
        "kd",
        store,
        tmp_path / "run",
        steps=3,
        **{"data.from_store": True, "loss.signal": "sampled"},
    )
    with pytest.raises(_Stop):
        train.run(config)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("data.from_store:")]
    assert lines == [
        "data.from_store: the store holds top-8 and 4 sampled logits per position: "
        "loss.signal=sampled, the config's choice (--set loss.signal=topk for the other)"
    ]
