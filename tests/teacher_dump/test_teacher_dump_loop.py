"""Batching loop: order, padding, overlap and bad input, with a fake step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teacher_dump import loop
from trainer.model.errors import ModelInputError


@jax.jit
def _fake_step(params, tokens_BxT):
    # Row-dependent outputs so that any reordering or padding leak shows.
    return {
        "topk_ids": tokens_BxT[..., None] * 2 + params,
        "hidden": {3: tokens_BxT.astype(jnp.float32)[..., None] * 0.5},
    }


def _tokens(n, t=5, seed=0):
    return np.random.default_rng(seed).integers(0, 100, (n, t), dtype=np.int32)


@pytest.mark.parametrize("num_rows,batch_size", [(10, 4), (8, 4), (3, 8), (1, 1)])
def test_rows_in_order_and_padding_stripped(num_rows, batch_size):
    tokens = _tokens(num_rows)
    batches = list(loop.run_batches(_fake_step, 1, tokens, batch_size))
    assert len(batches) == -(-num_rows // batch_size)
    sizes = [b["topk_ids"].shape[0] for b in batches]
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    assert sum(sizes) == num_rows
    out = loop.concat_batches(batches)
    np.testing.assert_array_equal(out["topk_ids"][..., 0], tokens * 2 + 1)
    np.testing.assert_array_equal(out["hidden"][3][..., 0], tokens * 0.5)
    assert isinstance(out["topk_ids"], np.ndarray)


def test_empty_input_yields_nothing():
    assert list(loop.run_batches(_fake_step, 0, np.zeros((0, 5), np.int32), 4)) == []


def test_next_batch_dispatched_before_previous_is_converted(monkeypatch):
    events = []

    def step(params, tokens_BxT):
        events.append(("dispatch", int(tokens_BxT[0, 0])))
        return {"x": jnp.asarray(tokens_BxT)}

    real_to_numpy = loop._to_numpy

    def to_numpy(outputs, n):
        events.append(("convert", int(np.asarray(outputs["x"])[0, 0])))
        return real_to_numpy(outputs, n)

    monkeypatch.setattr(loop, "_to_numpy", to_numpy)
    tokens = np.repeat(np.arange(4, dtype=np.int32)[:, None], 3, axis=1)
    list(loop.run_batches(step, None, tokens, batch_size=1, max_in_flight=2))
    assert events == [
        ("dispatch", 0),
        ("dispatch", 1),
        ("convert", 0),
        ("dispatch", 2),
        ("convert", 1),
        ("dispatch", 3),
        ("convert", 2),
        ("convert", 3),
    ]


def test_progress_callback():
    calls = []
    list(
        loop.run_batches(
            _fake_step, 0, _tokens(7), 3, progress=lambda done, total: calls.append((done, total))
        )
    )
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_token_range_checked_before_dispatch():
    dispatched = []

    def step(params, tokens_BxT):
        dispatched.append(1)
        return {"x": jnp.asarray(tokens_BxT)}

    bad = _tokens(2)
    bad[1, 3] = 100
    with pytest.raises(ModelInputError, match="outside the teacher's vocabulary"):
        list(loop.run_batches(step, None, bad, 2, vocab_size=100))
    bad[1, 3] = -1
    with pytest.raises(ModelInputError, match="token id -1"):
        list(loop.run_batches(step, None, bad, 2, vocab_size=100))
    assert not dispatched


@pytest.mark.parametrize(
    "tokens,batch_size,match",
    [
        (np.zeros((2, 3, 4), np.int32), 2, "2-D"),
        (np.zeros((2, 3), np.float32), 2, "integer"),
        (np.zeros((2, 3), np.int32), 0, "batch_size"),
        (np.zeros((2, 3), np.int32), 2.5, "batch_size"),
    ],
)
def test_bad_input(tokens, batch_size, match):
    with pytest.raises(ModelInputError, match=match):
        list(loop.run_batches(_fake_step, 0, tokens, batch_size))


def test_concat_of_nothing_is_an_error():
    with pytest.raises(ModelInputError, match="at least one row"):
        loop.concat_batches([])
