"""Shared helpers for the trainer tests: a tiny learnable store, tiny configs.

The store's "teacher" is a fixed random bigram model: tokens are sampled from
it, the top-k holds its true next-token log-probs, and the hidden "activation"
is a fixed random projection of the current token. So KD and HLD have real
signal to learn and a falling KL means the student learned something.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np

from store import StoreSchema, create_store
from trainer.training.config import load_config

CONFIG = "tiny"  # shipped config, by name: resolves from any directory

# Compiles dominate these tests on a busy 2-core machine; the trainer tests
# (and the subprocesses they start, via the environment) share one persistent
# XLA cache, so an identical step compiles once.
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "trainer_tests_xla_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILE_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
VOCAB = 512
SEQ = 32
K = 8
LAYER = 2


def _bigram(vocab, seed):
    rng = np.random.default_rng(seed)
    logits_VxV = rng.normal(size=(vocab, vocab)).astype(np.float64) * 3.0
    return logits_VxV - np.log(np.exp(logits_VxV).sum(-1, keepdims=True))


def make_store(
    path,
    num_rows=64,
    seq_len=SEQ,
    vocab=VOCAB,
    k=K,
    hidden_dim=64,
    layers=(LAYER,),
    rows_per_unit=16,
    seed=0,
    tokenizer_sha="ab" * 32,
    profile="exact",
    samples=0,
):
    """Writes a tiny bigram-teacher store; k=0 and layers=() give tokens only.

    samples > 0 adds the sampled logits: that many draws per position from the
    bigram teacher's next-token distribution.
    """
    logp_VxV = _bigram(vocab, seed)
    rng = np.random.default_rng(seed + 1)
    tokens = np.zeros((num_rows, seq_len), np.int32)
    tokens[:, 0] = rng.integers(0, vocab, num_rows)
    cdf = np.cumsum(np.exp(logp_VxV), -1)
    for t in range(1, seq_len):
        u = rng.random(num_rows)[:, None]
        tokens[:, t] = np.minimum((u > cdf[tokens[:, t - 1]]).sum(-1), vocab - 1)
    schema = StoreSchema(
        seq_len=seq_len,
        k=k,
        vocab_size=vocab,
        hidden_layers=tuple(layers),
        samples=samples,
        hidden_dim=hidden_dim if layers else 0,
        rows_per_unit=rows_per_unit,
        profile=profile,
        tokenizer={
            "sha256": tokenizer_sha,
            "vocab_size": vocab,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": 0,
        },
        teacher={
            "name": "bigram",
            "fingerprint": "0" * 64,
            "num_layers": 2 * LAYER,
            "d_model": hidden_dim,
            "config": {},
        }
        if (k or layers or samples)
        else {},
        packing={"rule": "noam"},
    )
    writer = create_store(str(path), schema, num_rows=num_rows)
    proj_VxD = np.random.default_rng(seed + 2).normal(size=(vocab, max(hidden_dim, 1)))
    for u in range(writer.num_units):
        start, stop = writer.unit_rows(u)
        tok = tokens[start:stop]
        kwargs = {}
        if k:
            lp = logp_VxV[tok]  # [R, T, V]
            ids = np.argsort(-lp, -1)[..., :k].astype(np.int32)
            kwargs["topk_ids"] = ids
            kwargs["topk_logprobs"] = np.take_along_axis(lp, ids, -1).astype(np.float32)
        if samples:
            arrays = draw_sampled(logp_VxV[tok.reshape(-1)], samples, seed + 3 + u)
            kwargs.update(
                (f"sampled_{name}", a.reshape(tok.shape + (samples,)))
                for name, a in zip(("ids", "counts", "logprobs"), arrays)
            )
        if layers:
            kwargs["hidden"] = {l: (proj_VxD[tok] * 30.0).astype(np.float32) for l in layers}
        writer.write_unit(u, tokens=tok, **kwargs)
    return str(path)


def draw_sampled(logp_NxV, num_samples, seed):
    """`num_samples` i.i.d. draws from each row's p, in the store layout (store/sampled.py).

    Distinct ids ascending, empty slots last (id 0, count 0, log-prob -inf).

    Args:
        logp_NxV: float64 teacher log-probs, one position per row.
        num_samples: S, draws per position.
        seed: numpy seed.

    Returns:
        (ids int32, counts uint8, logprobs float32), each [N, S].
    """
    counts_NxV = np.random.default_rng(seed).multinomial(num_samples, np.exp(logp_NxV))
    order_NxS = np.argsort(counts_NxV == 0, axis=-1, kind="stable")[:, :num_samples]
    counts_NxS = np.take_along_axis(counts_NxV, order_NxS, -1)
    ids_NxS = np.where(counts_NxS > 0, order_NxS, 0)
    lp_NxS = np.where(counts_NxS > 0, np.take_along_axis(logp_NxV, ids_NxS, -1), -np.inf)
    return ids_NxS.astype(np.int32), counts_NxS.astype(np.uint8), lp_NxS.astype(np.float32)


def cli_error_line(store_url, run_dir, *sets):
    """Runs `python -m trainer` on the tiny config; asserts exit 2 and returns its one stderr line."""
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        CONFIG,
        "--set",
        f"store.url={store_url}",
        "--set",
        f"run_dir={run_dir}",
    ]
    for item in sets:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, lines)
    return lines[0]


def tiny_config(method, store_url, run_dir, steps=None, **overrides):
    """The tiny config for `method`, with a budget giving about `steps` steps."""
    sets = [f"store.url={store_url}", f"run_dir={run_dir}"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    config = load_config(f"{CONFIG}:{method}", sets)
    if steps is not None:
        config.budget.unit = "flops"
        config.budget.value = budget_for_steps(config, steps)
    return config


def budget_for_steps(config, steps):
    """FLOPs budget that trainer.flops turns into `steps` steps of NLL-cost."""
    from trainer.training import loop as train

    model_cfg = train.model_config_from(config)
    per_token = train.flop_counts(config, model_cfg)["flops_per_token"]["nll"]
    return float(per_token * config.data.batch_size * config.data.seq_len * (steps + 0.5))
