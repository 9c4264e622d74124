"""Rollout rows: generated in fixed-shape batches, assembled, written to a store or JSON lines.

A store row is [prompt, completion, padding] with `loss_mask` 1 on the
completion (store/rollout.py); the store is written unit by unit with the
store's commit protocol, so a re-run skips committed units. JSON lines are
written to a temporary file renamed at the end (never half a file).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from trainer.model import generate as gen


class Generator:
    """Runs fixed-shape batches (one compile) over any subset of the prompts."""

    def __init__(self, params, cfg, prompts, new_tokens, sampling, seed, eos_id, pad_id, batch):
        self.params, self.cfg, self.prompts = params, cfg, prompts
        self.kw = dict(
            max_new_tokens=new_tokens, sampling=sampling, seed=seed, eos_id=eos_id, pad_id=pad_id
        )
        self.batch = batch
        self.tokens = 0  # generated tokens so far
        self.steady_s = 0.0  # time of batches after the first (which compiles)
        self.steady_tokens = 0
        self.batches = 0

    def __call__(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(completions [n, N], completion lengths [n], log-probs [n, N]) of prompts `index`."""
        outs = []
        for begin in range(0, len(index), self.batch):
            part = index[begin : begin + self.batch]
            # Short last batch: filled with copies of its first prompt (dropped after).
            full = np.concatenate([part, np.repeat(part[:1], self.batch - len(part))])
            p = self.prompts
            start = time.perf_counter()
            out = gen.generate(
                self.params,
                p.tokens_NxP[full],
                p.lengths_N[full],
                p.row_ids_N[full],
                self.cfg,
                **self.kw,
            )
            arrays = [
                np.asarray(a)[: len(part)]
                for a in (out.completions_BxN, out.completion_lengths_B, out.logprobs_BxN)
            ]
            took = time.perf_counter() - start
            made = int(arrays[1].sum())
            self.tokens += made
            if self.batches:
                self.steady_s += took
                self.steady_tokens += made
            self.batches += 1
            outs.append(arrays)
        return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]


def assemble_rows(prompts, index, completions, lengths, seq_len, pad_id):
    """(tokens [n, T], loss_mask [n, T]): prompt, completion, padding; mask 1 on the completion."""
    n = len(index)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    mask = np.zeros((n, seq_len), np.uint8)
    for j, i in enumerate(index):
        p, c = int(prompts.lengths_N[i]), int(lengths[j])
        tokens[j, :p] = prompts.tokens_NxP[i, :p]
        tokens[j, p : p + c] = completions[j, :c]
        mask[j, p : p + c] = 1
    return tokens, mask


def write_store(url, prompts, generator, seq_len, pad_id, rows_per_unit, packing, progress):
    """Generates and commits the store's units not committed yet; returns units written."""
    from store import StoreSchema, create_store

    schema = StoreSchema(
        seq_len=seq_len,
        k=0,
        vocab_size=generator.cfg.vocab_size,
        rows_per_unit=rows_per_unit,
        tokenizer=prompts.tokenizer,
        packing=packing,
        loss_mask=True,
    )
    writer = create_store(url, schema, num_rows=len(prompts.row_ids_N), split="train")
    done = writer.committed_units()
    written = 0
    for unit in range(writer.num_units):
        start, stop = writer.unit_rows(unit)
        if unit not in done:
            index = np.arange(start, stop)
            completions, lengths, _ = generator(index)
            tokens, mask = assemble_rows(prompts, index, completions, lengths, seq_len, pad_id)
            writer.write_unit(unit, tokens=tokens, loss_mask=mask)
            written += 1
        progress(stop, len(prompts.row_ids_N), generator.tokens)
    return written


def write_jsonl(path, prompts, generator, sp, progress):
    """Generates every prompt's completion and writes one JSON object per row, all at once."""
    index = np.arange(len(prompts.row_ids_N))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for begin in range(0, len(index), generator.batch):
            part = index[begin : begin + generator.batch]
            completions, lengths, logprobs = generator(part)
            for j, i in enumerate(part):
                c = int(lengths[j])
                record: dict[str, Any] = {
                    "row": int(prompts.row_ids_N[i]),
                    "prompt": prompts.tokens_NxP[i, : prompts.lengths_N[i]].tolist(),
                    "completion": completions[j, :c].tolist(),
                    "logprobs": [round(float(x), 6) for x in logprobs[j, :c]],
                }
                if sp is not None:
                    record["text"] = sp.decode(record["completion"])
                f.write(json.dumps(record) + "\n")
            progress(begin + len(part), len(index), generator.tokens)
    os.replace(tmp, path)  # never half a file
