"""The rollout fields through the loader and the device decoder: loss_mask and token_logprob
reach signals.Batch as float32 [B, T] (all ones for a store without a mask)."""

import jax
import numpy as np
import pytest

from store import StoreSchema, create_store
from trainer.model.errors import ConfigError
from trainer.training import data, decode


def _store(path, loss_mask, token_logprob, num_rows=8, T=12, V=40, profile="compact"):
    schema = StoreSchema(
        seq_len=T,
        k=0,
        vocab_size=V,
        profile=profile,
        rows_per_unit=4,
        loss_mask=loss_mask,
        token_logprob=token_logprob,
    )
    w = create_store(path, schema, num_rows=num_rows)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (num_rows, T)).astype(np.int32)
    mask = (np.arange(T)[None] >= rng.integers(1, T, num_rows)[:, None]).astype(np.uint8)
    lp = (-rng.exponential(1.0, (num_rows, T))).astype(np.float32)
    lp[:, -1] = 0
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(
            u,
            tokens=tokens[a:b],
            loss_mask=mask[a:b] if loss_mask else None,
            token_logprob=lp[a:b] if token_logprob else None,
        )
    return str(path), tokens, mask, lp


FIELDS = ("tokens", "loss_mask", "token_logprob")


def test_loader_and_decode_give_the_stored_values(tmp_path):
    url, tokens, mask, lp = _store(tmp_path / "s", True, True)
    source = data.StoreSource(url, FIELDS)
    assert source.spec.names == ["tokens", "loss_mask", "token_logprob"]
    rows = [6, 1, 3]
    stored = source.read_indices(rows)
    assert stored["loss_mask"].dtype == np.uint8 and stored["token_logprob"].dtype == np.float32
    batch = jax.jit(decode.decode_batch, static_argnums=1)(stored, source.spec)
    assert batch.loss_mask.dtype == np.float32 and batch.token_logprob.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(batch.loss_mask), mask[rows].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(batch.token_logprob), lp[rows])
    np.testing.assert_array_equal(np.asarray(batch.tokens), tokens[rows])
    assert batch.topk is None and batch.hidden is None


def test_a_store_without_a_mask_decodes_to_all_ones(tmp_path):
    url, tokens, _, _ = _store(tmp_path / "s", False, False)
    source = data.StoreSource(url, ("tokens", "loss_mask"))
    assert source.spec.names == ["tokens"] and source.stored_names() == ["tokens"]
    stored = source.read_indices([0, 5])
    batch = decode.decode_batch(stored, source.spec)
    assert batch.loss_mask.shape == (2, 12) and batch.loss_mask.dtype == np.float32
    assert (np.asarray(batch.loss_mask) == 1).all() and batch.token_logprob is None
    # A phase that needs the teacher's token log-probs refuses such a store before training.
    with pytest.raises(ConfigError, match="unknown field 'token_logprob'"):
        data.StoreSource(url, FIELDS).stored_names()


def test_fields_left_out_stay_none(tmp_path):
    url, *_ = _store(tmp_path / "s", True, True)
    source = data.StoreSource(url, ("tokens",))
    batch = decode.decode_batch(source.read_indices([2]), source.spec)
    assert batch.loss_mask is None and batch.token_logprob is None
    with pytest.raises(ValueError, match="unknown store field 'mask'"):
        data.StoreSource(url, ("tokens", "mask"))
