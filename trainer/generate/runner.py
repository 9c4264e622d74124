"""Generate rollouts from a student checkpoint (KV-cache decoding, `trainer.model.generate`).

    python -m trainer.generate --checkpoint RUN_DIR_or_MODEL_DIR \
        (--store URL --prompt-len P | --prompts FILE --tokenizer SPM) \
        --max-new-tokens N [--temperature 1] [--top-k 0] [--top-p 1] [--seed 0] \
        [--stop-at-eos] [--batch-size 8] [--limit ROWS] \
        (--out STORE [--rows-per-unit 64] | --out-jsonl FILE) [--json]

Prompts are the first P tokens of each committed row of a tokens store, or one
line of a text file each ([BOS] + its ids). Each row's sampling is keyed by
(seed, its store row or line number, position), so a row's rollout does not
depend on the batch it ran in.

`--out STORE` writes a tokens store (rollout rows aligned with the prompts:
out row j is prompt j) of T = P + N: the prompt, the completion, then padding,
with `loss_mask` = 1 on the completion tokens only (store/rollout.py). It is
written work unit by work unit with the store's commit protocol: a killed run
re-run with the same command skips the committed units and regenerates the
others (the same rows: the keys do not depend on the batch); a re-run with
other settings is refused (they are recorded in the manifest's "packing").
`--out-jsonl FILE` writes one JSON object per row instead (row, prompt,
completion, the model's log-probs of the completion, and its text when a
tokenizer is known), in one go.

Exit status: 0 done; 2 bad input, one line naming the fix; 130 on Ctrl-C, after
a line saying how to resume. Prints progress on stderr and a summary: rows, generated tokens, tokens/s
(steady state: batches that did not compile, and wall-clock), and the forward
FLOPs of generation (`trainer.flops.generation_flops`: per row a prefill, then
one KV-cache step per further token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from store.errors import StoreError
from trainer import flops
from trainer.evaluate.runner import EvalError, resolve_checkpoint
from trainer.generate import prompts as prompts_lib
from trainer.generate import rows as rows_lib
from trainer.model import model_io
from trainer.model.errors import ConfigError, ModelInputError
from trainer.model.sampling import SamplingConfig
from trainer.model.tokenizer import TokenizerError, check_matches, load_tokenizer
from trainer.training import run_lock


class GenerateError(ValueError):
    """Bad generation input: no prompts or output named, a tokenizer of another model."""


# Input errors the CLI reports as one line (anything else is a bug: traceback).
INPUT_ERRORS = (
    GenerateError,
    EvalError,  # resolve_checkpoint: no such checkpoint
    prompts_lib.PromptError,
    ConfigError,
    ModelInputError,
    model_io.ModelIOError,
    TokenizerError,
    StoreError,
)


class Progress:
    """A self-overwriting stderr line: rows done, generated tokens/s, at most once a second."""

    def __init__(self, stream=sys.stderr, every_s: float = 1.0):
        self.stream, self.every_s = stream, every_s
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int, tokens: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        rate = tokens / max(now - self.start, 1e-9)
        end = "\n" if done == total else ""
        self.stream.write(
            f"\r[generate] {done}/{total} rows  {tokens} tokens  {rate:,.0f} tok/s  "
            f"{now - self.start:6.1f}s{end}"
        )
        self.stream.flush()


def _check_tokenizer(cfg, metadata: dict, prompts: prompts_lib.Prompts) -> None:
    """The prompts' tokenizer must be the model's: its vocab size, and its sha256 when the
    prompts' source and the checkpoint both record one."""
    sha = prompts.tokenizer.get("sha256")
    try:
        check_matches(
            cfg.vocab_size,
            metadata if sha else {},
            {"sha256": sha, "vocab_size": prompts.vocab_size},
        )
    except TokenizerError as e:
        raise GenerateError(str(e)) from None


def rollouts(
    checkpoint: str,
    max_new_tokens: int,
    store: str | None = None,
    prompt_len: int | None = None,
    prompts_file: str | None = None,
    tokenizer: str | None = None,
    out: str | None = None,
    out_jsonl: str | None = None,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    stop_at_eos: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    rows_per_unit: int = 64,
    progress: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Generates a completion for every prompt and writes them (see the module docstring).

    Returns:
        The summary: {"checkpoint", "fingerprint", "rows", "prompt_width",
        "max_new_tokens", "generated_tokens", "wall_s", "tokens_per_s" (steady
        state; None with one batch), "wall_tokens_per_s", "flops" (total
        forward FLOPs), "flops_per_generated_token", "sampling", "seed",
        "out" / "out_jsonl", "units_written" (store output)}.

    Raises:
        One of INPUT_ERRORS for bad input, with the fix in its message.
    """
    if (store is None) == (prompts_file is None):
        raise GenerateError("pass prompts: --store URL --prompt-len P, or --prompts FILE")
    if store is not None and prompt_len is None:
        raise GenerateError("--store needs --prompt-len P (prompt = the first P tokens of a row)")
    if prompts_file is not None and tokenizer is None:
        raise GenerateError("--prompts needs --tokenizer (the checkpoint's SentencePiece model)")
    if (out is None) == (out_jsonl is None):
        raise GenerateError("pass one output: --out STORE (a rollout store) or --out-jsonl FILE")
    if batch_size < 1 or rows_per_unit < 1 or (limit is not None and limit < 1):
        raise GenerateError("--batch-size, --rows-per-unit and --limit must be >= 1")
    sampling = SamplingConfig() if sampling is None else sampling
    model_dir, run_dir = resolve_checkpoint(checkpoint)
    try:
        run_lock.refuse_if_owned(run_dir or checkpoint, "generate from it")
    except run_lock.RunDirLockedError as e:
        raise GenerateError(str(e)) from None
    if store is not None:
        prompts = prompts_lib.from_store(store, int(prompt_len or 0), limit)
    else:
        prompts = prompts_lib.from_text(str(prompts_file), str(tokenizer), limit)
    cfg, params, metadata = model_io.load_model(model_dir)
    _check_tokenizer(cfg, metadata, prompts)
    eos_id = prompts.tokenizer.get("eos_id") if stop_at_eos else None
    if stop_at_eos and (eos_id is None or eos_id < 0):
        raise GenerateError("--stop-at-eos needs the prompts' tokenizer to have an EOS id; drop it")
    pad = prompts.tokenizer.get("pad_id")
    pad_id = pad if pad is not None and pad >= 0 else 0
    generator = rows_lib.Generator(
        params, cfg, prompts, max_new_tokens, sampling, seed, eos_id, pad_id, batch_size
    )
    progress = progress or Progress()
    start = time.perf_counter()
    summary: dict[str, Any] = {}
    if out is not None:
        packing = {
            "rule": "rollout",  # prompt (first P tokens), completion, padding; loss_mask on completion
            "prompts": prompts.source,
            "model_fingerprint": metadata.get("fingerprint"),
            "max_new_tokens": max_new_tokens,
            "sampling": _sampling_dict(sampling),
            "seed": seed,
            "eos_id": eos_id,
        }
        seq_len = prompts.width + max_new_tokens
        summary["units_written"] = rows_lib.write_store(
            out, prompts, generator, seq_len, pad_id, rows_per_unit, packing, progress
        )
        summary["out"] = out
    else:
        sp = load_tokenizer(tokenizer) if tokenizer else None
        rows_lib.write_jsonl(out_jsonl, prompts, generator, sp, progress)
        summary["out_jsonl"] = out_jsonl
    wall = time.perf_counter() - start
    # Once per distinct prompt length: generation_flops traces the model's shapes per step.
    lengths, counts = np.unique(np.asarray(prompts.lengths_N), return_counts=True)
    total_flops = sum(
        int(n) * flops.generation_flops(cfg, int(length), max_new_tokens)["total"]
        for length, n in zip(lengths, counts)
    )
    rows = len(prompts.row_ids_N)
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "fingerprint": metadata.get("fingerprint"),
        "rows": rows,
        "prompt_width": prompts.width,
        "max_new_tokens": max_new_tokens,
        "generated_tokens": generator.tokens,
        "wall_s": wall,
        "tokens_per_s": generator.steady_tokens / generator.steady_s
        if generator.steady_s
        else None,
        "wall_tokens_per_s": generator.tokens / wall if wall else None,
        "flops": total_flops,
        "flops_per_generated_token": total_flops / (rows * max_new_tokens),
        "sampling": _sampling_dict(sampling),
        "seed": seed,
        **summary,
    }


def _sampling_dict(sampling: SamplingConfig) -> dict[str, Any]:
    return {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        self.exit(2, f"error: {message}\n")


def run_cli(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses the CLI arguments, generates, prints the summary; returns it."""
    p = _Parser(
        prog="python -m trainer.generate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run dir (uses its export/) or model dir")
    p.add_argument("--store", help="tokens store whose rows' prefixes are the prompts")
    p.add_argument("--prompt-len", type=int, help="P: prompt = the first P tokens of a store row")
    p.add_argument("--prompts", help="UTF-8 text file, one prompt per non-empty line")
    p.add_argument("--tokenizer", help="SentencePiece .model of the checkpoint (for --prompts)")
    p.add_argument("--max-new-tokens", type=int, required=True, help="N tokens per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no top-p cut")
    p.add_argument("--seed", type=int, default=0, help="rollout seed (keys: seed, row, position)")
    p.add_argument("--stop-at-eos", action="store_true", help="end a row at its first EOS")
    p.add_argument("--batch-size", type=int, default=8, help="rows per compiled call")
    p.add_argument("--limit", type=int, help="only the first ROWS prompts")
    p.add_argument("--out", help="rollout tokens store to write (with loss_mask); resumable")
    p.add_argument("--rows-per-unit", type=int, default=64, help="work-unit size of --out")
    p.add_argument("--out-jsonl", help="JSON-lines file to write instead of a store")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    a = p.parse_args(argv)
    try:
        result = _rollouts_from_args(a)
    except KeyboardInterrupt:
        where = (
            f"the committed units of {a.out} are kept; re-run the same command to resume "
            f"(committed units are skipped)"
            if a.out
            else f"nothing was written to {a.out_jsonl}; re-run the command"
        )
        print(f"\ninterrupted: {where}", file=sys.stderr)
        raise
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        rate = result["tokens_per_s"] or result["wall_tokens_per_s"]
        print(
            f"{result['rows']} rows, {result['generated_tokens']} tokens generated in "
            f"{result['wall_s']:.1f}s ({rate:,.0f} tokens/s); "
            f"{result['flops_per_generated_token']:,.0f} FLOPs per generated token "
            f"(prefill + KV-cache decode); wrote {result.get('out') or result.get('out_jsonl')}"
        )
    return result


def _rollouts_from_args(a: argparse.Namespace) -> dict[str, Any]:
    return rollouts(
        a.checkpoint,
        a.max_new_tokens,
        store=a.store,
        prompt_len=a.prompt_len,
        prompts_file=a.prompts,
        tokenizer=a.tokenizer,
        out=a.out,
        out_jsonl=a.out_jsonl,
        sampling=SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p),
        seed=a.seed,
        stop_at_eos=a.stop_at_eos,
        batch_size=a.batch_size,
        limit=a.limit,
        rows_per_unit=a.rows_per_unit,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line), 130 interrupted (Ctrl-C; says how to resume)."""
    try:
        run_cli(argv)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
