"""Batching, bucketing and reductions of trainer.evaluate.scoring on a toy "model".

The toy TokenScoreFn assigns log p(target) = -target / 10 whatever the
context, and calls a target the argmax iff it is even, so every expected
score below is a hand sum.
"""

import numpy as np
import pytest

from trainer.evaluate import scoring
from trainer.evaluate.scoring import Row
from trainer.model.errors import ConfigError


class ToyFn:
    def __init__(self):
        self.shapes = []

    def __call__(self, inputs_BxT, targets_BxT):
        self.shapes.append(inputs_BxT.shape)
        return -targets_BxT / 10.0, targets_BxT % 2 == 0


def test_pair_rows_hand_sums_and_buckets():
    fn = ToyFn()
    rows = [
        scoring.pair_row([1, 5, 6], [2, 4], max_len=64),  # cont sum -(2+4)/10
        scoring.pair_row([1] + [7] * 20, [3], max_len=64),  # 21 targets -> bucket 32
        scoring.pair_row([1, 9], [8, 8, 8], max_len=64),
    ]
    out = scoring.score_rows(fn, rows, batch_size=2, max_len=64)
    np.testing.assert_allclose(out.logprob_sum, [-0.6, -0.3, -2.4])
    np.testing.assert_array_equal(out.num_tokens, [2, 1, 3])
    np.testing.assert_array_equal(out.all_greedy, [True, False, True])
    # Longest first: batch 1 = the 21-target row + a 4-target row -> T=32; batch 2 -> T=16.
    assert fn.shapes == [(2, 32), (2, 16)]
    assert out.input_tokens == 4 + 21 + 4


def test_pair_row_left_truncation():
    row = scoring.pair_row(list(range(1, 11)), [20, 21], max_len=5)
    np.testing.assert_array_equal(row.tokens, [7, 8, 9, 10, 20, 21])
    np.testing.assert_array_equal(row.mask, [False, False, False, True, True])


def test_pair_row_long_continuation_keeps_its_tail():
    row = scoring.pair_row([1, 2], list(range(10, 20)), max_len=4)
    np.testing.assert_array_equal(row.tokens, [15, 16, 17, 18, 19])
    assert row.mask.all()


def test_bucket_length():
    assert scoring.bucket_length(1, 2048) == 16
    assert scoring.bucket_length(17, 2048) == 32
    assert scoring.bucket_length(1500, 2048) == 2048
    assert scoring.bucket_length(100, 100) == 100


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_document_windows_score_each_target_once(stride):
    ids = list(range(1, 12))  # 10 targets
    rows = scoring.document_rows(ids, max_len=4, stride=stride)
    scored = []
    for r in rows:
        assert len(r.tokens) - 1 <= 4
        scored += list(np.asarray(r.tokens[1:])[r.mask])
    assert scored == ids[1:]
    # Each scored target after the first window has >= max_len - stride inputs of context.
    out = scoring.score_rows(ToyFn(), rows, batch_size=3, max_len=4)
    assert out.logprob_sum.sum() == pytest.approx(-sum(ids[1:]) / 10)
    assert out.num_tokens.sum() == 10


def test_document_window_context():
    rows = scoring.document_rows(list(range(10)), max_len=4, stride=2)
    # Second window starts at token 2 and scores targets 5..6 with 3+ tokens of context.
    np.testing.assert_array_equal(rows[1].tokens, [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(rows[1].mask, [False, False, True, True])


def test_tokens_rows_mask_pad():
    rows = scoring.tokens_rows(np.array([[1, 4, 6, 0, 0]]), pad_id=0)
    np.testing.assert_array_equal(rows[0].mask, [True, True, False, False])
    out = scoring.score_rows(ToyFn(), rows, batch_size=4, max_len=4)
    assert out.logprob_sum[0] == pytest.approx(-1.0) and out.num_tokens[0] == 2
    no_pad = scoring.tokens_rows(np.array([[1, 4, 6, 0, 0]]), pad_id=-1)
    assert no_pad[0].mask.all()


def test_errors():
    with pytest.raises(ConfigError, match="batch size 0 must be >= 1"):
        scoring.score_rows(ToyFn(), [], batch_size=0, max_len=8)
    with pytest.raises(ConfigError, match="stride 9 must be in"):
        scoring.document_rows([1, 2, 3], max_len=8, stride=9)
    with pytest.raises(ConfigError, match="empty continuation"):
        scoring.pair_row([1, 2], [], max_len=8)
    with pytest.raises(ConfigError, match="truncate rows first"):
        scoring.score_rows(ToyFn(), [Row(np.arange(20), np.ones(19, bool))], 2, max_len=8)


def test_throughput_excludes_compiling_batches():
    class ShapeAwareFn(ToyFn):
        seen_shapes = set()

        def __call__(self, inputs_BxT, targets_BxT):
            self.seen_shapes.add(inputs_BxT.shape)
            return super().__call__(inputs_BxT, targets_BxT)

    rows = [scoring.pair_row([1, 2], [3], max_len=16) for _ in range(3)]  # 2 targets each
    out = scoring.score_rows(ShapeAwareFn(), rows, batch_size=1, max_len=16)
    assert out.input_tokens == 6 and out.warm_tokens == 4  # the first (1, 16) batch compiled
    stats = scoring.Throughput().add(out).to_dict()
    assert stats["scored_tokens"] == 6 and stats["tokens_per_s"] > 0
    toy = scoring.Throughput().add(scoring.score_rows(ToyFn(), rows, 1, 16)).to_dict()
    assert toy["tokens_per_s"] == toy["wall_tokens_per_s"]  # no shape info: wall time
