"""The teacher's NLL of the student's own samples: how teacher-like its generations are.

    python -m trainer.evaluate.sample_nll --student RUN_or_MODEL --teacher RUN_or_MODEL \
        --store HELDOUT_STORE --prompt-len P --max-new-tokens N \
        [--temperature 1] [--top-k 0] [--top-p 1] [--seed 0] [--limit ROWS] [--batch-size 8]

The student completes the first P tokens of each held-out row with N sampled
tokens (`trainer.model.generate`, keyed by (seed, store row, position) as every
rollout, so a row's sample does not depend on the batch);
the teacher then scores the completion tokens given the prompt and the
earlier completion tokens. Reported in nats per completion token:

    teacher_nll       −log p_T(y)  averaged over the sampled tokens y ~ q_S
    student_nll       −log q_S(y)  the same tokens under the student (its sample entropy
                      at temperature 1)
    reverse_kl        teacher_nll − student_nll: the single-sample estimate of
                      KL(q_S ‖ p_T) on the student's own distribution, what OPD minimises

Held-out log-perplexity asks how well the student predicts the teacher's
world (corpus text); this asks how well the teacher accepts the student's
text. A student can lower teacher_nll by collapsing onto a few likely
tokens (low entropy): read it beside student_nll, and reverse_kl, which
has no such escape. Standard errors take rows as the sampled units
(eval_results.ratio_se), as the held-out log-ppl's do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.evaluate import scoring
from trainer.evaluate.cli import EvalError, resolve_checkpoint
from trainer.model import model_io
from trainer.model.sampling import SamplingConfig
from trainer.training import eval_results


def sample_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]):
    """Scoring rows: prompt + completion, scoring exactly the completion tokens.

    Target j of a row is token j+1, so completion token P+i is target P+i−1.
    Rows with an empty completion are dropped (nothing to score).
    """
    rows = []
    for prompt, completion in zip(prompts, completions):
        if not len(completion):
            continue
        tokens = np.asarray([*prompt, *completion], np.int32)
        mask = np.zeros(len(tokens) - 1, bool)
        mask[len(prompt) - 1 :] = True
        rows.append(scoring.Row(tokens, mask))
    return rows


def score_samples(teacher_fn, student_fn, rows, batch_size: int, max_len: int) -> dict[str, Any]:
    """teacher_nll / student_nll / reverse_kl (and their SEs) of `rows` (see the module doc).

    Args:
        teacher_fn, student_fn: scoring.TokenScoreFn of the two models.
        rows: sample_rows(...) output.
        batch_size: rows per model call.
        max_len: the longest row's targets (P + N − 1 or more).
    """
    if not rows:
        raise EvalError("no completion tokens to score; pass --max-new-tokens >= 1")
    t = scoring.score_rows(teacher_fn, rows, batch_size, max_len)
    s = scoring.score_rows(student_fn, rows, batch_size, max_len)
    tokens = np.asarray(t.num_tokens, np.int64)
    teacher_row, student_row = -np.asarray(t.logprob_sum), -np.asarray(s.logprob_sum)
    total = int(tokens.sum())
    return {
        "teacher_nll": float(teacher_row.sum()) / total,
        "teacher_nll_se": eval_results.ratio_se(teacher_row, tokens),
        "student_nll": float(student_row.sum()) / total,
        "student_nll_se": eval_results.ratio_se(student_row, tokens),
        "reverse_kl": float((teacher_row - student_row).sum()) / total,
        "reverse_kl_se": eval_results.ratio_se(teacher_row - student_row, tokens),
        "tokens": total,
        "n": len(rows),
        "rows": eval_results.row_digest(np.ascontiguousarray(r.tokens).tobytes() for r in rows),
    }


def teacher_nll_of_samples(
    student: str,
    teacher: str,
    store: str,
    prompt_len: int,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    token_tile: int = 1024,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Samples completions of `store`'s row prefixes from `student`, scores them by `teacher`.

    Args:
        student, teacher: run directories (their export/) or model directories.
        store: a tokens store (the held-out split) whose first `prompt_len` tokens are prompts.
        prompt_len, max_new_tokens: P and N.
        sampling: the student's sampling (default: temperature 1, no cut: its own distribution).
        seed: rollout seed (row r's draws depend on (seed, r, position) only).
        limit: only the first ROWS rows of the store.
        batch_size: rows per generate / scoring call.
        token_tile: tokens per logits tile of the scoring.
        keep_samples: also return "samples": [(prompt ids, completion ids)] per row.

    Returns:
        score_samples' dict plus {"student", "teacher", "prompt_len", "max_new_tokens",
        "sampling", "seed"}.

    Raises:
        EvalError (a teacher of another vocabulary, a prompt length the store cannot
        give), ModelIOError, StoreError, ModelInputError: with the fix in the message.
    """
    from store import StoreReader  # Local: only this task reads a store.
    from trainer.model import generate as gen

    sampling = sampling or SamplingConfig()
    if batch_size < 1 or (limit is not None and limit < 1):
        raise EvalError("--batch-size and --limit must be >= 1")
    t_dir, s_dir = resolve_checkpoint(teacher)[0], resolve_checkpoint(student)[0]
    t_vocab, s_vocab = (model_io.load_config(d).vocab_size for d in (t_dir, s_dir))
    if t_vocab != s_vocab:  # Before generating anything.
        raise EvalError(
            f"--teacher has V={t_vocab}, the student V={s_vocab}: it cannot score the "
            f"student's tokens; pass a teacher of the student's tokenizer"
        )
    reader = StoreReader(store)
    reader.require(vocab_size=s_vocab)
    T = int(reader.schema.seq_len)
    if not 1 <= prompt_len < T:
        raise EvalError(
            f"--prompt-len {prompt_len} leaves no held-out prompt of the store's rows "
            f"(T={T}); pass a value in [1, {T - 1}]"
        )
    row_ids = np.asarray(reader.committed_rows())[: limit or None]
    if not len(row_ids):
        raise EvalError(f"store {store!r} has no committed rows; pass a finished store")
    tokens_NxP = reader.read(row_ids, fields=("tokens",))["tokens"][:, :prompt_len]
    pad_id = reader.schema.tokenizer.get("pad_id")
    if pad_id is not None and pad_id >= 0 and (tokens_NxP == pad_id).any():
        raise EvalError(
            f"store {store!r} has padding in its first {prompt_len} tokens; pass a packed "
            f"held-out store (dumped with --seq-len) or a smaller --prompt-len"
        )
    cfg, params, _ = model_io.load_model(s_dir)
    prompts, completions = [], []
    for begin in range(0, len(row_ids), batch_size):
        part = np.arange(begin, min(begin + batch_size, len(row_ids)))
        full = np.concatenate([part, np.repeat(part[:1], batch_size - len(part))])  # One shape.
        generation = gen.generate(
            params,
            tokens_NxP[full].astype(np.int32),
            np.full(batch_size, prompt_len, np.int32),
            row_ids[full],
            cfg,
            max_new_tokens,
            sampling,
            seed,
        )
        completions += [c.tolist() for c in np.asarray(generation.completions_BxN)[: len(part)]]
        prompts += [p.tolist() for p in tokens_NxP[part]]
    fns = []
    for d in (t_dir, s_dir):
        model_cfg, model_params, _ = model_io.load_model(d)
        fns.append(scoring.make_token_score_fn(model_params, model_cfg, token_tile))
    max_len = max(len(p) for p in prompts) + max_new_tokens - 1
    out = score_samples(fns[0], fns[1], sample_rows(prompts, completions), batch_size, max_len)
    out.update(
        student=os.path.abspath(student),
        teacher=os.path.abspath(teacher),
        prompt_len=prompt_len,
        max_new_tokens=max_new_tokens,
        sampling={
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
        },
        seed=seed,
    )
    if keep_samples:
        out["samples"] = list(zip(prompts, completions))
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        self.exit(2, f"error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the result as JSON; exit 0, or 2 with one line on bad input."""
    from store.errors import StoreError
    from trainer.model.errors import ModelInputError, ModelIOError

    p = _Parser(prog="python -m trainer.evaluate.sample_nll", description=__doc__.split("\n")[0])
    p.add_argument("--student", required=True, help="the student: run dir or model dir")
    p.add_argument("--teacher", required=True, help="the teacher: run dir or model dir")
    p.add_argument("--store", required=True, help="tokens store whose row prefixes are prompts")
    p.add_argument("--prompt-len", type=int, required=True, help="P tokens of prompt per row")
    p.add_argument("--max-new-tokens", type=int, required=True, help="N sampled tokens per row")
    p.add_argument("--temperature", type=float, default=1.0, help="student sampling; 0 greedy")
    p.add_argument("--top-k", type=int, default=0, help="student top-k cut (0: none)")
    p.add_argument("--top-p", type=float, default=1.0, help="student top-p cut (1: none)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--limit", type=int, help="only the first ROWS rows of --store")
    p.add_argument("--batch-size", type=int, default=8, help="rows per model call")
    a = p.parse_args(argv)
    try:
        out = teacher_nll_of_samples(
            a.student,
            a.teacher,
            a.store,
            a.prompt_len,
            a.max_new_tokens,
            SamplingConfig(a.temperature, a.top_k, a.top_p),
            a.seed,
            a.limit,
            a.batch_size,
        )
    except (EvalError, ModelIOError, ModelInputError, StoreError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
