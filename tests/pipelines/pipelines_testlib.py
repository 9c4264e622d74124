"""Helpers for the pipelines tests: a tiny corpus, store comparison, a bare-loop reference dump."""

import gzip
import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import store
import teacher_dump
from pipelines import inputs, packing
from store.compare import store_arrays, store_differences  # noqa: F401 (store_arrays: used as lib.store_arrays)
from trainer.model import tokenizer

VOCAB = 384
SEQ_LEN = 32
K = 8
ROWS_PER_UNIT = 8
BATCH = 4


def random_documents(seed, num_docs, min_words=5, max_words=60):
    """Deterministic pseudo-English documents (a few lines each)."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
        for _ in range(300)
    ]
    docs = []
    for _ in range(num_docs):
        n = rng.randint(min_words, max_words)
        text = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:  # multi-line documents
            cut = len(text) // 2
            text = text[:cut] + "\n" + text[cut:]
        docs.append(text.strip() + ".")
    return docs


def write_corpus(directory, seed=0, docs_per_file=(40, 30, 30)):
    """Writes a.txt (blank-line separated), b.jsonl.gz (C4 format), c.parquet.

    Returns:
        list of all documents in canonical order (sorted file names).
    """
    os.makedirs(directory, exist_ok=True)
    n_a, n_b, n_c = docs_per_file
    docs = random_documents(seed, n_a + n_b + n_c)
    a, b, c = docs[:n_a], docs[n_a : n_a + n_b], docs[n_a + n_b :]
    with open(os.path.join(directory, "a.txt"), "w") as f:
        f.write("\n\n\n".join(a) + "\n")
    with gzip.open(os.path.join(directory, "b.jsonl.gz"), "wt") as f:
        for text in b:
            f.write(json.dumps({"text": text, "url": "http://x"}) + "\n")
    pq.write_table(pa.table({"text": c}), os.path.join(directory, "c.parquet"))
    return docs


def assert_stores_identical(url_a, url_b):
    """Same arrays, byte for byte, and the same committed units."""
    assert store_differences(url_a, url_b) == []


def reference_rows(docs, tokenizer_path, heldout_fraction=0.0, split="train"):
    """The spine packed in one process, without Beam."""
    sp = tokenizer.load_tokenizer(tokenizer_path)
    keep = [d for d in docs if packing.is_heldout(d, heldout_fraction) == (split == "heldout")]
    return packing.pack_stream([sp.encode(d) for d in keep], sp.bos_id(), sp.eos_id(), SEQ_LEN)


def bare_dump(url, schema, tokens_NxT, teacher_path, layers):
    """The non-Beam reference: teacher_dump.extract_rows per unit + StoreWriter.write_unit."""
    teacher = teacher_dump.load_teacher(teacher_path)
    writer = store.create_store(url, schema, num_rows=len(tokens_NxT))
    for unit in range(writer.num_units):
        start, stop = writer.unit_rows(unit)
        rows = tokens_NxT[start:stop]
        signal = teacher_dump.loop.concat_batches(
            teacher_dump.extract_rows(
                teacher,
                rows,
                batch_size=BATCH,
                k=schema.k,
                layers=layers,
                samples=schema.samples,
                row_ids=np.arange(start, stop),
            )
        )
        writer.write_unit(unit, tokens=rows, **signal)  # the signal's keys are write_unit's
    return writer


def dump_argv(corpus_glob, store_url, teacher_path, tokenizer_path, *extra):
    return [
        "--input",
        corpus_glob,
        "--store",
        store_url,
        "--teacher",
        teacher_path,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        str(SEQ_LEN),
        "--k",
        str(K),
        "--rows-per-unit",
        str(ROWS_PER_UNIT),
        "--batch-size",
        str(BATCH),
        "--progress-interval",
        "0",
        *extra,
    ]


def corpus_documents(directory):
    return list(inputs.iter_corpus([os.path.join(directory, "*")]))
