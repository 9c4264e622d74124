"""load_teacher + extract_rows: batch-size invariance, padding, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import teacher_dump
from teacher_dump import loop
from trainer.model.errors import ConfigError, ModelInputError, ModelIOError


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def teacher(ckpt):
    return teacher_dump.load_teacher(ckpt[0])


def _rows(n, cfg, t=16, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (n, t), dtype=np.int32)


def test_load_teacher(ckpt, teacher):
    path, fingerprint = ckpt
    assert teacher.fingerprint == fingerprint and len(fingerprint) == 64
    assert teacher.path == path
    assert teacher.cfg.num_layers == 2


def test_bf16_teacher_precast_is_bit_identical(ckpt, teacher):
    bf16 = teacher_dump.load_teacher(ckpt[0], dtype="bfloat16")
    assert bf16.cfg.dtype == "bfloat16" and bf16.fingerprint == ckpt[1]
    assert bf16.params["embedding"].dtype == jnp.bfloat16
    assert bf16.params["layers"]["attn"]["q"].dtype == jnp.bfloat16
    assert bf16.params["final_norm"].dtype == jnp.float32  # applied in fp32 by the model
    tokens = _rows(2, teacher.cfg)
    precast = bf16.extract(tokens, batch_size=2, k=8)
    fp32_params = jax.device_get(
        teacher_dump.make_extract_fn(bf16.cfg, k=8)(teacher.params, tokens)
    )
    for name in ("topk_ids", "topk_logprobs"):
        np.testing.assert_array_equal(precast[name], fp32_params[name])
    np.testing.assert_array_equal(precast["hidden"][1], fp32_params["hidden"][1])


def test_same_rows_same_signal_at_batch_1_and_8(teacher):
    tokens = _rows(10, teacher.cfg)  # 10 = 8 + a padded batch of 2
    one = loop.concat_batches(teacher_dump.extract_rows(teacher, tokens, batch_size=1, k=8))
    eight = list(teacher_dump.extract_rows(teacher, tokens, batch_size=8, k=8))
    assert [b["topk_ids"].shape[0] for b in eight] == [8, 2]
    eight = loop.concat_batches(eight)
    np.testing.assert_array_equal(one["topk_ids"], eight["topk_ids"])
    # Different batch shapes compile to different matmul blockings: ~1 ulp.
    np.testing.assert_allclose(one["topk_logprobs"], eight["topk_logprobs"], rtol=2e-6, atol=0)
    scale = np.abs(one["hidden"][1]).max()
    np.testing.assert_allclose(one["hidden"][1], eight["hidden"][1], rtol=0, atol=1e-5 * scale)
    # Batch 1 has no padding, so equality also shows the padding rows are gone.
    assert eight["topk_ids"].shape == (10, 16, 8)


def test_extract_fn_is_cached(teacher):
    assert teacher.extract_fn(k=8) is teacher.extract_fn(k=8)
    assert teacher.extract_fn(k=8) is not teacher.extract_fn(k=4)


def test_top_p_through_rows(teacher):
    tokens = _rows(3, teacher.cfg)
    out = loop.concat_batches(
        teacher_dump.extract_rows(teacher, tokens, batch_size=2, k=32, top_p=0.2)
    )
    kept = np.isfinite(out["topk_logprobs"])
    assert kept[..., 0].all() and not kept.all()
    assert (out["topk_ids"][~kept] == 0).all()
    mass_without_last = (
        np.where(kept, np.exp(out["topk_logprobs"]), 0).sum(-1)
        - np.exp(np.take_along_axis(out["topk_logprobs"], kept.sum(-1, keepdims=True) - 1, -1))[
            ..., 0
        ]
    )
    assert (mass_without_last < 0.2 + 1e-6).all()


def test_token_out_of_vocab(teacher):
    tokens = _rows(4, teacher.cfg)
    tokens[1, 5] = teacher.cfg.vocab_size  # first batch: fails before any compile
    with pytest.raises(ModelInputError, match="outside the teacher's vocabulary"):
        list(teacher_dump.extract_rows(teacher, tokens, batch_size=2, k=4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), r"k=0 is outside \[1, vocab_size=256\]"),
        (dict(k=257), r"k=257 is outside"),
        (dict(k=4, layers=(0,)), r"layer 0 is outside \[1, 2\]"),
        (dict(k=4, layers=(3,)), r"layer 3 is outside \[1, 2\]"),
        (dict(k=4, layers=(1, 1)), "duplicates"),
        (dict(k=4, top_p=0.0), r"top_p=0.0 is outside \(0, 1\]"),
        (dict(k=4, top_p=1.5), "top_p=1.5"),
        (dict(k=4, token_tile=0), "token_tile=0"),
        (dict(k=4, hidden_dtype="float33"), "hidden_dtype='float33' is not a dtype"),
    ],
)
def test_bad_extract_options(teacher, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        teacher_dump.make_extract_fn(teacher.cfg, **kwargs)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelIOError, match="does not exist"):
        teacher_dump.load_teacher(str(tmp_path / "nope"))


def test_unreadable_checkpoint(tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelIOError, match="incomplete"):
        teacher_dump.load_teacher(str(tmp_path / "empty"))
    # A checkpoint whose config is garbage.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpt[0], broken)
    for f in broken.iterdir():
        if f.suffix == ".json" and "config" in f.name:
            f.write_text("{not json")
    with pytest.raises(ModelIOError, match="unreadable"):
        teacher_dump.load_teacher(str(broken))
