"""Bytes each remat policy keeps for the backward pass, per token (traced, not run).

    python bench/remat_residuals.py --model gemma3-270m --seq 2048 [--json OUT]

For every `model.remat` policy, JAX's own saved-residuals report of the
student forward (abstract shapes, nothing allocated or compiled) is summed
over the residuals that carry the token axis: the activation memory the
backward pass holds, which grows with tokens per device (weights, kept by
every policy, are left out). The compiler's per-chip totals, which add
transient buffers, the loss tiles and the optimizer, come from
bench/step_memory.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys

import jax
import jax.ad_checkpoint  # noqa: F401 (print_saved_residuals)
import jax.numpy as jnp
import numpy as np

from trainer.model import gemma3 as model
from trainer.model import model_config

_ITEMSIZE = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "s32": 4, "bool": 1, "pred": 1}


def residual_bytes(cfg: model_config.ModelConfig, batch: int, seq: int) -> int:
    """Bytes of the residuals with a [batch, seq] prefix that the backward keeps."""
    params = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)

    def readout(p, t):  # Linear in the outputs: every residual is the model's own.
        out = model.forward(p, t, cfg)
        return jnp.sum(out.final_hidden_BxTxD.astype(jnp.float32))

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        jax.ad_checkpoint.print_saved_residuals(readout, params, tokens)
    total = 0
    for line in text.getvalue().splitlines():
        m = re.match(r"(\w+)\[([\d,]*)\]", line)
        if not m or "from the argument" in line:
            continue
        shape = tuple(int(d) for d in m.group(2).split(",") if d)
        if seq in shape:
            total += int(np.prod(shape)) * _ITEMSIZE[m.group(1)]
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    rows = []
    for policy in model_config.RematPolicy:
        cfg = model_config.get_config(
            args.model, vocab_size=args.vocab, dtype=args.dtype, remat=policy.value
        )
        per_token = residual_bytes(cfg, args.batch, args.seq) / (args.batch * args.seq)
        rows.append(
            {
                "model": args.model,
                "seq": args.seq,
                "dtype": args.dtype,
                "remat": policy.value,
                "residual_bytes_per_token": per_token,
            }
        )
        print(
            f"{args.model:12s} T={args.seq} {policy.value:16s} "
            f"{per_token / 1024:8.1f} KiB/token kept for backward",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
