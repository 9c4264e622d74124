"""KV-cache generation (trainer.model.{kv_cache, sampling, generate}).

* prefill + one-token decode steps give the full forward's logits at every
  position (ragged rows, a window shorter than the sequence, a global layer);
* greedy decoding equals Hugging Face `generate` token for token on a random
  HF Gemma 3 (7 layers so block 6 is global, window 4 < the 20+ generated
  positions, GQA 4:2, linearly scaled global RoPE), converted with
  trainer.model.hf_import; HF runs each row alone (no padding), ours ragged;
* sampling draws from softmax(logits / τ) of the full forward (chi-square over
  many rows), top-k / top-p keep exactly the support a float64 reference
  computes, and a row's rollout does not depend on its batch.
"""

import jax
import numpy as np
import pytest
from scipy import stats

from trainer.model import gemma3 as model
from trainer.model import generate as gen
from trainer.model import kv_cache, model_config
from trainer.model.errors import ConfigError, ModelInputError
from trainer.model.sampling import SamplingConfig, filter_logits, row_keys, sample

_forward = jax.jit(model.forward, static_argnames=("cfg", "capture_layers", "num_blocks"))
_prefill = jax.jit(kv_cache.prefill, static_argnames=("cfg", "max_len"))
_decode = jax.jit(kv_cache.decode_step, static_argnames=("cfg",))

# Random HF Gemma 3 for the greedy parity (the reference of tests/model/test_model_hf_parity.py).
_HF_KW = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    sliding_window=4,
    query_pre_attn_scalar=16,
    max_position_embeddings=64,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    },
)


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config.get_config("tiny-7")  # window 4, block 6 global, GQA 4:2
    return cfg, model.init_params(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def small():
    """Two blocks (local with window 4, then global), GQA 4:2: compiles ~3x faster than tiny-7.

    The final norm's scale is 2 (weights 1.0): logits twice as wide, a softmax far from
    uniform, so a wrong temperature shows in a few thousand draws.
    """
    cfg = model_config.get_config("tiny-7", num_layers=2, global_every=2)
    params = model.init_params(cfg, jax.random.key(1))
    return cfg, {**params, "final_norm": params["final_norm"] + 1.0}


# One shape and sampling for the rollout tests (one compile): B=4, P=7, N=12.
_SAMPLING = SamplingConfig(temperature=1.5)
_LENGTHS = np.array([4, 7, 2, 5])


def _rollout(small, prompts, lengths, rows, seed=3, **kw):
    cfg, params = small
    out = gen.generate(params, prompts, lengths, rows, cfg, 12, _SAMPLING, seed=seed, **kw)
    return jax.tree_util.tree_map(np.asarray, out)


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(HF model, our cfg, our params) of the same random weights."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from trainer.model import hf_import, model_io

    config = transformers.Gemma3TextConfig(**_HF_KW, attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # HF inits them at 0; random values test the 1 + w form.
                p.normal_(0.0, 0.3)
    root = tmp_path_factory.mktemp("hf_gen")
    hf.save_pretrained(root / "hf")
    hf_import.convert(root / "hf", root / "ckpt")
    cfg, params, _ = model_io.load_model(root / "ckpt")
    return hf, cfg, params


def _full_logits(params, tokens_BxT, cfg):
    out = _forward(params, np.asarray(tokens_BxT, np.int32), cfg)
    return np.asarray(model.unembed(params, out.final_hidden_BxTxD, cfg), np.float64)


def _ragged(rng, lengths, width, vocab):
    prompts = np.zeros((len(lengths), width), np.int32)
    for b, n in enumerate(lengths):
        prompts[b, :n] = rng.integers(0, vocab, n)
    return prompts


def test_prefill_and_decode_logits_equal_the_full_forward(tiny):
    cfg, params = tiny
    rng = np.random.default_rng(0)
    B, T, P = 3, 22, 9
    tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    ref = _full_logits(params, tokens, cfg)
    lengths = np.array([2, 9, 5])  # ragged; every row then feeds its true next tokens
    left, offsets = gen.left_align(
        np.where(np.arange(P)[None] < lengths[:, None], tokens[:, :P], 0), lengths, 0
    )
    steps = T - lengths.max()
    logits, cache = _prefill(params, left, offsets, cfg, max_len=P + steps)
    rows = np.arange(B)
    np.testing.assert_allclose(np.asarray(logits), ref[rows, lengths - 1], atol=1e-5, rtol=0)
    for t in range(steps):
        logits, cache = _decode(params, cache, tokens[rows, lengths + t], cfg)
        np.testing.assert_allclose(
            np.asarray(logits), ref[rows, lengths + t], atol=1e-5, rtol=0, err_msg=f"step {t}"
        )
    # Local rings hold the window only; the global layer the whole buffer.
    assert [k.shape[1] for k in cache.keys] == [4] * 5 + [P + steps] + [4]


def test_greedy_equals_hf_generate_token_for_token(hf_pair):
    import torch

    hf, cfg, params = hf_pair
    rng = np.random.default_rng(1)
    lengths, N = np.array([3, 11, 1, 6]), 20  # window 4 << prompt + 20 new tokens
    prompts = _ragged(rng, lengths, 11, cfg.vocab_size)
    out = gen.generate(
        params, prompts, lengths, np.arange(4), cfg, N, SamplingConfig(temperature=0.0)
    )
    ours = np.asarray(out.completions_BxN)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor(prompts[b : b + 1, :n], dtype=torch.long),
                do_sample=False,
                max_new_tokens=N,
                min_new_tokens=N,
                pad_token_id=0,
            )
        np.testing.assert_array_equal(ours[b], ref[0, n:].numpy(), err_msg=f"row {b}")
    assert (np.asarray(out.completion_lengths_B) == N).all()


def test_a_rows_rollout_does_not_depend_on_its_batch(small):
    """Rows moved to other batch indices, with other neighbours (and their other padding)."""
    cfg, _ = small
    rng = np.random.default_rng(2)
    prompts = _ragged(rng, _LENGTHS, 7, cfg.vocab_size)
    rows = np.array([10, 11, 12, 13])
    a = _rollout(small, prompts, _LENGTHS, rows).completions_BxN
    perm = np.array([2, 0, 3, 1])
    b = _rollout(small, prompts[perm], _LENGTHS[perm], rows[perm]).completions_BxN
    np.testing.assert_array_equal(b, a[perm])
    others = _ragged(rng, np.array([6, 1]), 7, cfg.vocab_size)
    mixed = np.concatenate([others[:1], prompts[[3]], others[1:], prompts[[1]]])
    c = _rollout(small, mixed, np.array([6, 5, 1, 7]), np.array([50, 13, 51, 11])).completions_BxN
    np.testing.assert_array_equal(c[[1, 3]], a[[3, 1]])
    # ... and it does depend on the row id and the seed.
    assert (_rollout(small, prompts, _LENGTHS, rows + 100).completions_BxN != a).any()
    assert (_rollout(small, prompts, _LENGTHS, rows, seed=4).completions_BxN != a).any()


def _first_tokens(params, cfg, prompt, draws, sampling):
    """First sampled token of `draws` rows holding the same prompt (different row ids)."""
    prompts = np.tile(prompt[None], (draws, 1)).astype(np.int32)
    lengths = np.full(draws, len(prompt))
    out = gen.generate(params, prompts, lengths, np.arange(draws), cfg, 1, sampling, seed=7)
    return np.asarray(out.completions_BxN)[:, 0]


def _chi2_pvalue(tokens, probs):
    """Chi-square goodness of fit, bins with expected count < 5 pooled into one."""
    n = len(tokens)
    observed = np.bincount(tokens, minlength=len(probs)).astype(np.float64)
    expected = probs * n
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


def _softmax64(logits, temperature):
    z = logits / temperature
    z = z - z.max()
    return np.exp(z) / np.exp(z).sum()


def test_sampling_matches_the_softmax_in_distribution(small):
    cfg, params = small
    prompt = np.array([5, 17, 3, 99, 42], np.int32)
    logits = _full_logits(params, prompt[None], cfg)[0, -1]
    draws, tau = 6000, 0.7
    tokens = _first_tokens(params, cfg, prompt, draws, SamplingConfig(temperature=tau))
    # Right distribution: not rejected. A wrong temperature (e.g. τ ignored) is rejected:
    # the test has the power to see the breakage it is meant to catch.
    assert _chi2_pvalue(tokens, _softmax64(logits, tau)) > 1e-3
    assert _chi2_pvalue(tokens, _softmax64(logits, 1.0)) < 1e-6


def _support64(logits, tau, top_k, top_p):
    """The token set top-k then top-p keep, by sorting in float64."""
    order = np.argsort(-logits, kind="stable")
    keep = order[: top_k or len(logits)]
    probs = _softmax64(logits[keep], tau)
    before = np.cumsum(probs) - probs
    return set(keep[before < top_p].tolist())


_sample = jax.jit(sample, static_argnames=("sampling",))


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (12, 0.8)])
def test_top_k_and_top_p_restrict_the_support(small, top_k, top_p):
    """The filter the sampler draws through, on the forward's logits of one prompt."""
    cfg, params = small
    logits = _full_logits(params, np.array([[7, 1, 64, 9]]), cfg)[0, -1]
    sampling = SamplingConfig(temperature=0.9, top_k=top_k, top_p=top_p)
    support = _support64(logits, 0.9, top_k, top_p)
    assert 1 < len(support) < cfg.vocab_size // 2
    filtered = np.asarray(filter_logits(jax.numpy.asarray(logits[None], np.float32), sampling))[0]
    assert set(np.flatnonzero(np.isfinite(filtered)).tolist()) == support
    draws = 3000
    keys = row_keys(0, jax.numpy.arange(draws), jax.numpy.full(draws, 4))
    tiled = jax.numpy.tile(jax.numpy.asarray(logits, np.float32), (draws, 1))
    tokens = np.asarray(_sample(tiled, keys, sampling))
    assert set(tokens.tolist()) == support  # never outside; every kept token drawn
    # Within the support, the renormalised tempered softmax.
    probs = np.zeros(cfg.vocab_size)
    idx = np.array(sorted(support))
    probs[idx] = _softmax64(logits[idx], 0.9)
    assert _chi2_pvalue(tokens, probs) > 1e-3


def test_eos_stops_a_row(small):
    cfg, _ = small
    prompts = _ragged(np.random.default_rng(4), _LENGTHS, 7, cfg.vocab_size)
    free = _rollout(small, prompts, _LENGTHS, np.arange(4)).completions_BxN
    eos = int(free[0, 2])  # row 0 emits it by step 2 (its first hit counts)
    out = _rollout(small, prompts, _LENGTHS, np.arange(4), eos_id=eos, pad_id=511)
    for b in range(4):
        hits = np.flatnonzero(free[b] == eos)
        n = hits[0] + 1 if len(hits) else 12
        assert out.completion_lengths_B[b] == n
        np.testing.assert_array_equal(out.completions_BxN[b, :n], free[b, :n])
        assert (out.completions_BxN[b, n:] == 511).all()
        assert (out.logprobs_BxN[b, n:] == 0).all()
    assert out.completion_lengths_B[0] <= 3


def test_logprobs_are_the_models_own(small):
    """log q(token) at τ = 1 of each generated token, against the full forward (float64)."""
    cfg, params = small
    prompts = _ragged(np.random.default_rng(5), _LENGTHS, 7, cfg.vocab_size)
    out = _rollout(small, prompts, _LENGTHS, np.arange(4))
    rows = np.zeros((4, 7 + 12), np.int32)  # prompt + completion, right-padded (causal: harmless)
    for b, n in enumerate(_LENGTHS):
        rows[b, : n + 12] = np.concatenate([prompts[b, :n], out.completions_BxN[b]])
    logits = _full_logits(params, rows, cfg)
    for b, n in enumerate(_LENGTHS):
        z = logits[b, n - 1 : n + 11]
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        np.testing.assert_allclose(
            out.logprobs_BxN[b], logp[np.arange(12), out.completions_BxN[b]], atol=1e-5
        )


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(prompts_BxP=np.zeros(4, np.int32)), "batch, prompt_len"),
        (dict(prompt_lengths_B=np.array([0, 2])), r"in \[1, 3\]"),
        (dict(prompt_lengths_B=np.array([4, 2])), r"in \[1, 3\]"),
        (dict(row_ids_B=np.array([0])), "one per prompt"),
        (dict(row_ids_B=np.array([-1, 0])), "2\\^32"),
        (dict(prompts_BxP=np.full((2, 3), 512, np.int32)), "vocabulary"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_input_is_refused(tiny, change, match):
    cfg, params = tiny
    args = dict(
        prompts_BxP=np.ones((2, 3), np.int32),
        prompt_lengths_B=np.array([3, 1]),
        row_ids_B=np.array([0, 1]),
        max_new_tokens=2,
    )
    with pytest.raises(ModelInputError, match=match):
        gen.generate(params, cfg=cfg, **{**args, **change})


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_k=-2),
        dict(top_p=0.0),
        dict(top_p=1.5),
    ],
)
def test_bad_sampling_config(kw):
    with pytest.raises(ConfigError):
        SamplingConfig(**kw)
