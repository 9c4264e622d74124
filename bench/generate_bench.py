"""Generation throughput: a KV-cache decode step vs the compiled bare forward, same model and batch.

    .venv/bin/python bench/generate_bench.py                       # demo-student, CPU
    python bench/generate_bench.py --model gemma3-270m --vocab 32000 --batch 64 \
        --prompt-len 512 --new-tokens 512                          # one accelerator

For one model config and batch B, with T = prompt length P + new tokens N:
  * forward: `gemma3.forward` + the tied unembedding over [B, T] (jitted,
    compiled once), per token = its time / (B·T);
  * decode step: `kv_cache.decode_step` at buffer index P + N/2 (the middle of
    a rollout) with the cache donated, per token = its time / B;
  * decode step in a scan: the same step, greedy, `min(N/2, 32)` of them in
    one jitted `lax.scan` (as generate runs them: no host round trip per
    token), per step = (scan of n − scan of 1) / (n − 1);
  * the fixed cost of a jitted call (an empty one) and sampling alone (one
    token per row over V at temperature 1), which the ratios above contain;
  * generate: `trainer.model.generate.generate` end to end (prefill + N − 1
    steps in one jit), generated tokens/s = B·N / its time; its in-loop step
    (sampling included) = (its time − generate with N = 1) / (N − 1).
The headline is `decode_over_forward` = decode per-token time / forward
per-token time (issue target: <= 1.5); `scanned_decode_over_forward` is the
same without the per-call cost. Model FLOPs per token of both
(trainer.flops: forward 2N + 2·d·V + causal attention; a decode step 2N +
2·d·V + its query's attention over the cache) are reported beside them, and
the compiler's own counts (`compiled_counts`: FLOPs, bytes accessed and
kernels per token of the decode step and of the forward with its layers
unrolled), which a loaded machine does not blur, so a ratio above 1 can be
told apart from work: a decode step moves every weight for B tokens, the
forward for B·T, so at small B it is bound by bytes and kernels, not FLOPs.

Times are medians of --repeats interleaved rounds after a warm-up call of
each program (every round runs every program once in turn, so the shared
machine's load changes hit them alike). JSON goes to --out
(bench/results by default) with the machine load (`os.getloadavg`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
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
from trainer.model.sampling import SamplingConfig, row_keys, sample  # noqa: E402


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each `(fn, calls)` in `fns`, measured in interleaved rounds.

    Each fn is called once first (compiles); then every round times each fn in
    turn (`calls` back-to-back calls, waited for, divided by `calls`), so a
    change of the shared machine's load hits every program alike (A B A B …).
    """
    for fn, _ in fns.values():
        jax.block_until_ready(fn())
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, calls) in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def _kernels(compiled) -> int:
    """Instructions the compiled program's entry computation runs (fusions, copies, calls):
    what a runtime launches per call, each with a fixed cost."""
    text = compiled.as_text()
    entry = text[text.index("\nENTRY") :].split("\n}\n")[0]
    return sum(
        1
        for line in entry.splitlines()[1:]
        if " = " in line
        and not re.search(r"\b(parameter|constant|get-tuple-element|tuple)\(", line)
    )


def compiled_counts(cfg, params, tokens, step, cache, batch: int) -> dict:
    """The compiler's own counts (`cost_analysis`) per token, which a loaded machine does not
    blur: FLOPs, bytes accessed and kernels of the forward (its layers unrolled, so that
    nothing sits in a loop the analysis counts once) and of one decode step."""
    unrolled = cfg.replace(scan_layers=False)

    def forward(params, tokens):
        out = model.forward(params, tokens, unrolled)
        return model.unembed(params, out.final_hidden_BxTxD, unrolled)

    fwd = jax.jit(forward).lower(params, tokens).compile()
    dec = step.lower(params, cache, tokens[:, 0], cfg=cfg).compile()
    out: dict = {}
    for name, compiled, per_call_tokens in (
        ("forward", fwd, tokens.size),
        ("decode_step", dec, batch),
    ):
        cost = compiled.cost_analysis() or {}
        out[name] = {
            "flops_per_token": float(cost.get("flops", 0.0)) / per_call_tokens,
            "bytes_per_token": float(cost.get("bytes accessed", 0.0)) / per_call_tokens,
            "kernels_per_call": _kernels(compiled),
            "kernels_per_token": _kernels(compiled) / per_call_tokens,
        }
    out["bytes_per_token_ratio"] = (
        out["decode_step"]["bytes_per_token"] / out["forward"]["bytes_per_token"]
    )
    return out


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

    # The same decode step without a host round trip per token: `loop_steps` greedy steps
    # (argmax fed back) inside one jitted lax.scan, as generate runs them. Per step =
    # (scan of loop_steps − scan of 1) / (loop_steps − 1): the call's fixed cost cancels.
    loop_steps = max(2, min(new_tokens // 2, 32))

    def scan_steps(n):
        def run(params, cache, token_B):
            def body(carry, _):
                cache, token_B = carry
                logits_BxV, cache = kv_cache.decode_step(params, cache, token_B, cfg)
                return (cache, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)), None

            (cache, token_B), _ = jax.lax.scan(body, (cache, token_B), None, length=n)
            return token_B

        return jax.jit(run)

    scan_n, scan_1 = scan_steps(loop_steps), scan_steps(1)
    # Both start from the mid-rollout cache (not donated: it is reused); loop_steps more
    # tokens stay inside the buffer (index + loop_steps <= T).
    # A copy: the timed decode steps below donate (delete) the cache they are given.
    last = jax.tree.map(lambda a: jnp.array(a, copy=True), state["cache"])
    loop_cache = kv_cache.KVCache(
        keys=last.keys,
        values=last.values,
        offsets_B=last.offsets_B,
        index=jnp.asarray(middle_index, jnp.int32),
    )
    first = tokens[:, 0]

    # What a jitted call costs with (almost) no work: the host's fixed cost per call.
    noop = jax.jit(lambda token_B: token_B + 1)

    # Sampling alone (temperature 1 over V, one key per row), as generate draws each token.
    logits = jax.random.normal(jax.random.key(1), (batch, cfg.vocab_size), jnp.float32)
    keys = row_keys(0, jnp.arange(batch), jnp.zeros(batch, jnp.int32))
    draw = jax.jit(lambda l, k: sample(l, k, SamplingConfig(temperature=1.0)))

    lengths = np.full(batch, prompt_len)
    sampling = SamplingConfig(temperature=1.0)
    prompts = np.asarray(tokens[:, :prompt_len])
    rows = np.arange(batch)

    def run_generate(n):
        return gen.generate(params, prompts, lengths, rows, cfg, n, sampling).completions_BxN

    compiler_counts = compiled_counts(cfg, params, tokens, step, loop_cache, batch)
    medians = interleaved_medians(
        {
            "forward": (lambda: forward(params, tokens), 1),
            "decode_step": (one_step, 8),
            "scan_n": (lambda: scan_n(params, loop_cache, first), 1),
            "scan_1": (lambda: scan_1(params, loop_cache, first), 1),
            "jit_call": (lambda: noop(first), 8),
            "sample": (lambda: draw(logits, keys), 8),
            "generate": (lambda: run_generate(new_tokens), 1),
            # The prefill and the first token alone: the rest of generate is its N - 1 steps.
            "generate_1": (lambda: run_generate(1), 1),
        },
        repeats,
    )
    forward_s, step_s, call_s, sample_s = (
        medians["forward"],
        medians["decode_step"],
        medians["jit_call"],
        medians["sample"],
    )
    generate_s, first_s = medians["generate"], medians["generate_1"]
    scanned_step_s = max(medians["scan_n"] - medians["scan_1"], 0.0) / (loop_steps - 1)
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
        "scanned_decode_step_s": scanned_step_s,
        "scanned_decode_s_per_token": scanned_step_s / batch,
        "scanned_decode_over_forward": scanned_step_s / batch / per_forward,
        "scan_loop_steps": loop_steps,
        "jit_call_s": call_s,
        "sample_s": sample_s,
        "generate_s": generate_s,
        "prefill_and_first_token_s": first_s,
        "loop_step_s": loop_step_s,
        "loop_step_over_forward": loop_step_s / batch / per_forward,
        "generate_tokens_per_s": batch * new_tokens / generate_s,
        "compiled_counts": compiler_counts,
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
        f"{'  in a scan':14}{r['scanned_decode_step_s']:>12.4f}"
        f"{result['batch'] / r['scanned_decode_step_s'] if r['scanned_decode_step_s'] else 0:>14,.0f}"
        f"{1e6 * r['scanned_decode_s_per_token']:>12.2f}  (greedy, no call per token)",
        f"{'jit call':14}{r['jit_call_s']:>12.6f}  (an empty jitted call: the fixed cost per call)",
        f"{'sample':14}{r['sample_s']:>12.6f}  (one token per row over V, temperature 1)",
        f"{'generate':14}{r['generate_s']:>12.4f}{r['generate_tokens_per_s']:>14,.0f}",
        f"{'  its steps':14}{r['loop_step_s']:>12.4f}{result['batch'] / max(r['loop_step_s'], 1e-12):>14,.0f}"
        f"{1e6 * r['loop_step_s'] / result['batch']:>12.2f}  (sampling included)",
        *[
            f"{name:14}compiled: {c['flops_per_token']:,.0f} FLOPs, {c['bytes_per_token']:,.0f} "
            f"bytes accessed, {c['kernels_per_token']:.3f} kernels per token "
            f"({c['kernels_per_call']} per call)"
            for name, c in r["compiled_counts"].items()
            if isinstance(c, dict)
        ],
        f"decode / forward bytes accessed per token: "
        f"{r['compiled_counts']['bytes_per_token_ratio']:.2f}x",
        f"decode / forward per token: {r['decode_over_forward']:.2f}x (target <= 1.5x); "
        f"in a scan: {r['scanned_decode_over_forward']:.2f}x; "
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
