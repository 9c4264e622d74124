"""The demo's stages: each one runs the user-facing command for its step.

Stages call the CLIs (not library functions) on purpose: the demo is the
proof that the commands in the README work together on a fresh machine.
Child output streams to the console (so progress is visible) and to
OUT/logs/<stage>.log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from scripts import demo_corpus, demo_report, demo_results
from scripts.demo_sizes import MODELS, DemoSize

# The demo's student arms: run-name prefix -> (trainer method, extra --set). KD, HLDC
# and HLDF read the demo config's default signal, 12 sampled logits per position
# (unbiased; better students than top-32 at fewer bytes, bench/profile_quality.py);
# kd_topk is the paper's arm, the same KD on the stored top-k.
ARMS = {
    "nll": ("nll", ()),
    "kd": ("kd", ()),
    "kd_topk": ("kd", ("loss.signal=topk",)),
    "hldc": ("hldc", ()),
    "hldf": ("hldf", ()),
}
METHODS = tuple(ARMS)


class CommandFailed(RuntimeError):
    """A child command exited non-zero."""


@dataclasses.dataclass
class Context:
    """Paths and settings shared by the stages."""

    size: DemoSize
    out: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    @property
    def report_path(self) -> str:
        return self.path("report.md")

    @property
    def models(self) -> dict:
        return MODELS[self.size.name]


def run(ctx: Context, stage: str, *args: str) -> str:
    """Runs `python ARGS...`, streaming output; returns its stdout text."""
    os.makedirs(ctx.path("logs"), exist_ok=True)
    cmd = [sys.executable, *args]
    log_path = ctx.path("logs", f"{stage}.log")
    print("  $ " + " ".join(cmd[1:]), flush=True)
    lines = []
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if "apitools" not in line:  # Beam's harmless import warning.
                print("    " + line.rstrip(), flush=True)
        code = proc.wait()
    if code:
        tail = next((l.strip() for l in reversed(lines) if l.strip()), "")
        raise CommandFailed(f"`{' '.join(cmd[1:3])} ...` exited {code}: {tail} (log: {log_path})")
    return "".join(lines)


def corpus(ctx: Context) -> None:
    paths = demo_corpus.write_corpus(
        ctx.path("corpus"), ctx.size.heldout_fraction, ctx.size.max_docs
    )
    # The teacher signal is only needed for as many rows as the students read:
    # a hash-chosen subset of the training documents (not the alphabetically first).
    with open(paths["train"], encoding="utf-8") as src:
        docs = demo_corpus.hash_subset(src.readlines(), ctx.size.dump_docs)
    with open(ctx.path("corpus", "dump.jsonl"), "w", encoding="utf-8") as dst:
        dst.writelines(docs)


def tokenizer(ctx: Context) -> None:
    run(
        ctx,
        "tokenizer",
        "-m",
        "pipelines.train_tokenizer",
        "--input",
        ctx.path("corpus", "train.jsonl"),
        "--model-prefix",
        ctx.path("tokenizer"),
        "--vocab-size",
        str(ctx.size.vocab_size),
    )


def _dump_args(ctx: Context, inputs: str, store: str, split: str = "train") -> list[str]:
    return [
        "-m",
        "pipelines.dump",
        "--input",
        inputs,
        "--store",
        store,
        "--split",
        split,
        "--tokenizer",
        ctx.path("tokenizer.model"),
        "--seq-len",
        str(ctx.size.seq_len),
        "--progress-interval",
        "5",
    ]


def spine(ctx: Context) -> None:
    """Tokens-only stores: teacher pre-training data and the held-out split."""
    run(ctx, "spine", *_dump_args(ctx, ctx.path("corpus", "train.jsonl"), ctx.path("tokens_store")))
    run(
        ctx,
        "spine",
        *_dump_args(ctx, ctx.path("corpus", "heldout.jsonl"), ctx.path("heldout_store"), "heldout"),
    )


def train_run(
    ctx: Context, stage: str, role: str, run_dir: str, store: str, budget: float, *extra_sets: str
) -> None:
    """`python -m trainer` with the size's model, shapes and overrides, then `extra_sets`."""
    model = ctx.models["teacher" if role == "teacher" else "student"]
    sets = [
        f"store.url={store}",
        f"run_dir={run_dir}",
        f"budget.value={budget}",
        f"model.name={model}",
        f"model.vocab_size={ctx.size.vocab_size}",
        f"data.seq_len={ctx.size.seq_len}",
        *ctx.size.overrides,
    ]
    if role != "teacher":
        sets += [
            f"teacher.d_model={ctx.models['teacher_d']}",
            f"teacher.hidden_layer={ctx.models['teacher_layer']}",
            f"data.k={ctx.size.k}",
        ]
    sets += extra_sets  # Last, so a caller's --set overrides the size's (e.g. data.k=0).
    args = ["-m", "trainer", "--config", f"{ctx.size.config}:{role}"]
    for s in sets:
        args += ["--set", s]
    run(ctx, stage, *args)


def teacher(ctx: Context) -> None:
    train_run(
        ctx,
        "teacher",
        "teacher",
        ctx.path("runs", "teacher"),
        ctx.path("tokens_store"),
        ctx.size.teacher_budget,
    )


def teacher_dump_args(
    ctx: Context, store: str, k: int, samples: int = 0, teacher_run: str = "teacher"
) -> list[str]:
    """`pipelines.dump` argv: the teacher's signal for the dump subset into `store`.

    Args:
        ctx: the demo context.
        store: the store path to write.
        k: stored top-k width (0: no top-k).
        samples: sampled draws per position (`--samples`; 0: none).
        teacher_run: the teacher's run directory under OUT/runs (bench/teacher_ladder.py
            dumps teachers of several budgets).
    """
    args = [
        *_dump_args(ctx, ctx.path("corpus", "dump.jsonl"), store),
        "--teacher",
        ctx.path("runs", teacher_run, "export"),
        # Teacher-only flags (a tokens-only dump refuses them).
        "--k",
        str(k),
        "--batch-size",
        str(ctx.size.dump_batch_size),
    ]
    return args + (["--samples", str(samples)] if samples else [])


def dump(ctx: Context) -> None:
    """Top-k and sampled logits in one store: the students' default and the paper's arm."""
    t0 = time.time()
    run(ctx, "dump", *teacher_dump_args(ctx, ctx.path("store"), ctx.size.k, ctx.size.samples))
    _save_json(ctx, "dump_seconds", time.time() - t0)


# Objective-penalty diagnostics `store stats` reports on the dumped store: the
# students' own loss settings (the demo config's defaults), and the old
# defaults (alpha 0.9, tail zero) for contrast.
PENALTY_SETTINGS = {"students": None, "alpha0.9_zero": ("0.9", "1.0", "zero")}


def student_loss_settings(ctx: Context) -> tuple[str, str, str]:
    """(alpha, tau, tail) of the KD students, read from the demo config."""
    from trainer.training import config as config_lib  # Local: only this stage needs the trainer.

    loss = config_lib.load_config(f"{ctx.size.config}:kd").loss
    return str(loss.alpha), str(loss.tau), loss.tail


def inspect(ctx: Context) -> None:
    out = run(ctx, "inspect", "-m", "store", "inspect", ctx.path("store"), "--json")
    _save_json(ctx, "store_inspect", json.loads(out[out.index("{") :]))
    run(ctx, "inspect", "-m", "store", "verify", ctx.path("store"))
    out = run(ctx, "inspect", "-m", "store", "stats", ctx.path("store"), "--json")
    _save_json(ctx, "store_stats", json.loads(out[out.index("{") :]))
    penalties = {}
    for name, settings in PENALTY_SETTINGS.items():
        alpha, tau, tail = settings or student_loss_settings(ctx)
        out = run(
            ctx,
            "inspect",
            "-m",
            "store",
            "stats",
            ctx.path("store"),
            "--json",
            "--alpha",
            alpha,
            "--tau",
            tau,
            "--tail",
            tail,
        )
        penalties[name] = json.loads(out[out.index("{") :])["objective_penalty"]
    _save_json(ctx, "objective_penalty", penalties)


def student_runs(ctx: Context) -> list[tuple[str, str, int]]:
    """(run name, arm, seed) of every student run, e.g. ("kd_topk_s1", "kd_topk", 1).

    An arm is a key of ARMS (a trainer method and its extra overrides).
    """
    seeds = dict(ctx.size.seeds)
    return [(f"{m}_s{s}", m, s) for m in METHODS for s in range(seeds.get(m, 0))]


def students(ctx: Context) -> None:
    for name, arm, seed in student_runs(ctx):
        method, sets = ARMS[arm]
        train_run(
            ctx,
            "students",
            method,
            ctx.path("runs", name),
            ctx.path("store"),
            ctx.size.student_budget,
            f"seed={seed}",
            *sets,
        )


def evaluate(ctx: Context) -> None:
    """Held-out log-ppl over every held-out row; downstream tasks up to eval_limit each.

    Two evaluate calls per run, so --limit never truncates the held-out score;
    trainer.evaluate merges both into RUN_DIR/eval.json (what trainer.report reads).
    """
    downstream = bool(ctx.size.eval_limit and demo_report.downstream_data_installed())
    for name in ("teacher", *[r[0] for r in student_runs(ctx)]):
        evaluate_heldout(ctx, name)
        if downstream:
            run(
                ctx,
                "evaluate",
                *_evaluate_args(ctx, name),
                "--tasks",
                ",".join(demo_results.TASKS),
                "--limit",
                str(ctx.size.eval_limit),
            )


def _evaluate_args(ctx: Context, name: str) -> list[str]:
    return [
        "-m",
        "trainer.evaluate",
        "--checkpoint",
        ctx.path("runs", name),
        "--tokenizer",
        ctx.path("tokenizer.model"),
    ]


def evaluate_heldout(ctx: Context, name: str) -> None:
    """Held-out log-ppl of OUT/runs/NAME on every held-out row (merged into its eval.json)."""
    run(
        ctx,
        "evaluate",
        *_evaluate_args(ctx, name),
        "--tasks",
        "heldout",
        "--store",
        ctx.path("heldout_store"),
    )


def report(ctx: Context) -> None:
    run(
        ctx,
        "report",
        "-m",
        "trainer.report",
        *[ctx.path("runs", r[0]) for r in student_runs(ctx)],
        "--out",
        ctx.path("sweep_report"),
    )
    demo_report.write_report(ctx, student_runs(ctx), [name for name, _ in STAGES])


def _save_json(ctx: Context, key: str, value) -> None:
    """Facts for the final report, kept across resumed runs."""
    path = ctx.path("facts.json")
    facts = json.load(open(path)) if os.path.exists(path) else {}
    facts[key] = value
    with open(path, "w") as f:
        json.dump(facts, f, indent=1)


STAGES = [
    ("corpus", corpus),
    ("tokenizer", tokenizer),
    ("spine", spine),
    ("teacher", teacher),
    ("dump", dump),
    ("inspect", inspect),
    ("students", students),
    ("evaluate", evaluate),
    ("report", report),
]
