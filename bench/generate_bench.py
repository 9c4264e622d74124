"""Generation throughput: a KV-cache decode step vs the compiled bare forward, same model and batch.

    .venv/bin/python bench/generate_bench.py                       # demo-student, CPU
    python bench/generate_bench.py --model gemma3-270m --vocab 32000 --batch 64 \
        --prompt-len 512 --new-tokens 512                          # one accelerator

For one model config and batch B, with T = prompt length P + new tokens N:
  * forward: `gemma3.forward` + the tied unembedding over [B, T] (jitted,
    compiled once), per token = its time / (B·T);
  * decode step: `kv_cache.decode_step` at buffer index P + N/2 (the middle of
    a rollout) with the cache donated, per token = its time / B;
  * generate: `trainer.model.generate.generate` end to end (prefill + N − 1
    steps in one jit), generated tokens/s = B·N / its time; its in-loop step
    (sampling included) = (its time − generate with N = 1) / (N − 1).
The headline is `decode_over_forward` = decode per-token time / forward
per-token time (issue target: <= 1.5). Model FLOPs per token of both
(trainer.flops: forward 2N + 2·d·V + causal attention; a decode step 2N +
2·d·V + its query's attention over the cache) are reported beside them, so
a ratio above 1 can be told apart from work: a decode step moves every
weight for B tokens, the forward for B·T, so at small B it is bound by
memory bandwidth and per-call overhead rather than FLOPs.

Times are the fastest of --repeats calls after a warm-up call (the machine
is shared: the fastest call is the closest to the work). JSON goes to --out
(bench/results by default) with the machine load (`os.getloadavg`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer import flops  # noqa: E402
from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import generate as gen  # noqa: E402
from trainer.model import kv_cache, model_config  # noqa: E402
from trainer.model.sampling import SamplingConfig  # noqa: E402


def _best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` calls after a warm-up (compile): on a shared machine the
    fastest call is the closest to the work itself (medians moved 5x with the load)."""
    jax.block_until_ready(fn())  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def measure(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Per-token times of the forward and a decode step, and generate's tokens/s."""
    T = prompt_len + new_tokens
    params = model.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, T)), jnp.int32)

    @jax.jit
    def forward(params, tokens):
        out = model.forward(params, tokens, cfg)
        return model.unembed(params, out.final_hidden_BxTxD, cfg)

    forward_s = _best_time(lambda: forward(params, tokens), repeats)

    # A cache at the middle of a rollout: prefill P tokens, then feed N/2 tokens.
    prefill = jax.jit(kv_cache.prefill, static_argnames=("cfg", "max_len"))
    offsets = jnp.zeros(batch, jnp.int32)
    _, cache = prefill(params, tokens[:, :prompt_len], offsets, cfg=cfg, max_len=T)
    step = jax.jit(kv_cache.decode_step, static_argnames=("cfg",), donate_argnums=(1,))
    for t in range(new_tokens // 2):
        _, cache = step(params, cache, tokens[:, prompt_len + t], cfg=cfg)
    middle_index = int(cache.index)  # a host int: the cache's own buffers are donated
    state = {"cache": cache}

    def one_step():
        # Same buffer index every time (the step's cost does not depend on it: fixed shapes).
        logits, new = step(params, state["cache"], tokens[:, 0], cfg=cfg)
        state["cache"] = kv_cache.KVCache(
            keys=new.keys,
            values=new.values,
            offsets_B=new.offsets_B,
            index=jnp.asarray(middle_index, jnp.int32),
        )
        return logits

    step_s = _best_time(one_step, repeats * 4)

    lengths = np.full(batch, prompt_len)
    sampling = SamplingConfig(temperature=1.0)
    prompts = np.asarray(tokens[:, :prompt_len])
    rows = np.arange(batch)

    def run_generate(n):
        return gen.generate(params, prompts, lengths, rows, cfg, n, sampling).completions_BxN

    generate_s = _best_time(lambda: run_generate(new_tokens), repeats)
    # The prefill and the first token alone: the rest of generate_s is its N - 1 in-loop steps.
    first_s = _best_time(lambda: run_generate(1), repeats)
    loop_step_s = max(generate_s - first_s, 0.0) / max(new_tokens - 1, 1)
    counts = flops.param_counts(cfg)
    forward_flops = (
        2 * counts["backbone_params"]
        + 2 * cfg.d_model * cfg.vocab_size
        + flops.attention_flops_per_token(cfg, T) / 3  # forward third of fwd + bwd
    )
    decode_flops = flops.decode_flops_per_token(cfg, prompt_len + new_tokens // 2 + 1)
    per_forward = forward_s / (batch * T)
    per_decode = step_s / batch
    return {
        "forward_s": forward_s,
        "forward_tokens_per_s": batch * T / forward_s,
        "forward_s_per_token": per_forward,
        "decode_step_s": step_s,
        "decode_tokens_per_s": batch / step_s,
        "decode_s_per_token": per_decode,
        "decode_over_forward": per_decode / per_forward,
        "generate_s": generate_s,
        "prefill_and_first_token_s": first_s,
        "loop_step_s": loop_step_s,
        "loop_step_over_forward": loop_step_s / batch / per_forward,
        "generate_tokens_per_s": batch * new_tokens / generate_s,
        "forward_flops_per_token": float(forward_flops),
        "decode_flops_per_token": float(decode_flops),
        "generation_flops": flops.generation_flops(cfg, prompt_len, new_tokens),
    }


def format_table(result: dict) -> str:
    r = result["results"]
    lines = [
        f"model {result['model']} (V={result['vocab']}), batch {result['batch']}, "
        f"prompt {result['prompt_len']} + {result['new_tokens']} new, {result['device']}, "
        f"load {result['loadavg'][0]:.1f}",
        f"{'':14}{'s/call':>12}{'tokens/s':>14}{'us/token':>12}{'FLOPs/token':>16}",
        f"{'forward':14}{r['forward_s']:>12.4f}{r['forward_tokens_per_s']:>14,.0f}"
        f"{1e6 * r['forward_s_per_token']:>12.2f}{r['forward_flops_per_token']:>16,.0f}",
        f"{'decode step':14}{r['decode_step_s']:>12.4f}{r['decode_tokens_per_s']:>14,.0f}"
        f"{1e6 * r['decode_s_per_token']:>12.2f}{r['decode_flops_per_token']:>16,.0f}",
        f"{'generate':14}{r['generate_s']:>12.4f}{r['generate_tokens_per_s']:>14,.0f}",
        f"{'  its steps':14}{r['loop_step_s']:>12.4f}{result['batch'] / max(r['loop_step_s'], 1e-12):>14,.0f}"
        f"{1e6 * r['loop_step_s'] / result['batch']:>12.2f}  (sampling included)",
        f"decode / forward per token: {r['decode_over_forward']:.2f}x (target <= 1.5x); "
        f"in generate's loop: {r['loop_step_over_forward']:.2f}x",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo-student", help="model config name")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the config's)")
    p.add_argument("--dtype", default="float32", help="compute dtype: float32 or bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench/results")
    a = p.parse_args(argv)
    overrides = {"dtype": a.dtype, **({"vocab_size": a.vocab} if a.vocab else {})}
    cfg = model_config.get_config(a.model, **overrides)
    result = {
        "bench": "generate",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "loadavg": list(os.getloadavg()),
        "model": a.model,
        "vocab": cfg.vocab_size,
        "dtype": a.dtype,
        "batch": a.batch,
        "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens,
        "repeats": a.repeats,
        "results": measure(cfg, a.batch, a.prompt_len, a.new_tokens, a.repeats),
    }
    print(format_table(result))
    os.makedirs(a.out, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "")
    path = os.path.join(a.out, f"generate_{a.model}_{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
