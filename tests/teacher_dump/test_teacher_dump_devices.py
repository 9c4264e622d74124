"""Data-parallel extraction over simulated CPU devices (conftest: 8)."""

import jax
import numpy as np
import pytest

import teacher_dump
from teacher_dump import teacher as teacher_lib
from trainer.model.errors import ConfigError, ModelInputError


def test_four_devices_match_one(tiny_ckpt):
    if len(jax.local_devices()) < 4:
        pytest.skip("needs 4 (simulated) devices")
    path, _ = tiny_ckpt
    one = teacher_dump.load_teacher(path)
    four = teacher_dump.load_teacher(path, devices=teacher_lib.local_devices(4))
    assert four.num_devices == 4 and one.num_devices == 1
    leaf = jax.tree_util.tree_leaves(four.params)[0]
    assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
    placed = four.put_tokens(np.zeros((8, 16), np.int32))
    assert len(placed.sharding.device_set) == 4 and not placed.sharding.is_fully_replicated

    tokens = np.random.default_rng(9).integers(0, one.cfg.vocab_size, (10, 16), dtype=np.int32)
    a = one.extract(tokens, batch_size=8, k=8)
    b = four.extract(tokens, batch_size=8, k=8)
    np.testing.assert_array_equal(a["topk_ids"], b["topk_ids"])
    np.testing.assert_allclose(a["topk_logprobs"], b["topk_logprobs"], rtol=2e-6)
    np.testing.assert_allclose(
        a["hidden"][1], b["hidden"][1], rtol=0, atol=1e-5 * np.abs(a["hidden"][1]).max()
    )

    with pytest.raises(ModelInputError, match="does not split over 4 devices"):
        four.extract(tokens, batch_size=6, k=8)


@pytest.mark.parametrize("n", [0, 10**6, 1.5])
def test_bad_device_count(n):
    with pytest.raises(ConfigError, match="num_devices="):
        teacher_lib.local_devices(n)
