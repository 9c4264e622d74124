"""Demo sizes: one registry, so the CI shrink and the GPU run share the chain.

Each size says what it costs. `cpu` is what `make demo` runs on a 2-core
laptop-class machine; `ci` is the shrunken copy the test suite runs end to
end; `gpu` is the same chain at paper-like shapes for a single accelerator.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """Every knob of a demo run.

    Attributes:
        name: registry key.
        max_docs: cap on corpus documents (None: all ~10k articles).
        heldout_fraction: share of documents kept out for evaluation.
        vocab_size: SentencePiece vocabulary.
        seq_len: tokens per store row.
        k: stored top-k width.
        config: trainer config file (with ':role' appended per run).
        teacher_budget: NLL pre-training FLOPs of the teacher.
        student_budget: FLOPs budget shared by every student method.
        overrides: extra `--set` overrides for every trainer run.
        eval_limit: examples per downstream task (0: skip downstream tasks);
            the held-out log-ppl always scores every held-out row.
        dump_batch_size: rows per teacher call in the dump.
        dump_docs: train documents the teacher signal is dumped for (None:
            all; a hash-chosen subset otherwise); students only need as many
            rows as their budget reads.
        samples: sampled logits per position dumped next to the top-k (`--samples`);
            the students' KD term reads them (the demo config's loss.signal).
        seeds: per student arm (scripts/demo_stages.ARMS), how many seeds (0, 1, ...)
            are trained: NLL, KD (sampled) and KD top-k get two so the report can
            show a spread.
    """

    name: str
    max_docs: int | None
    heldout_fraction: float
    vocab_size: int
    seq_len: int
    k: int
    config: str
    teacher_budget: float
    student_budget: float
    overrides: tuple[str, ...] = ()
    eval_limit: int = 0
    dump_batch_size: int = 16
    dump_docs: int | None = None
    samples: int = 12
    seeds: tuple[tuple[str, int], ...] = (
        ("nll", 2),
        ("kd", 2),
        ("kd_topk", 2),
        ("hldc", 1),
        ("hldf", 1),
    )


SIZES = {
    # `make demo`: ~15 min on 2 idle CPU cores (setup included): 8 students of ~1 min;
    # 61 min on the shared 2-core box at load 7-18 (2026-12-06, docs/science.md).
    # Students use the demo config's loss defaults (alpha 0.7, tail bucket).
    "cpu": DemoSize(
        name="cpu",
        max_docs=None,
        heldout_fraction=0.02,
        vocab_size=2048,
        seq_len=128,
        k=32,
        config="trainer/configs/demo.py",
        teacher_budget=5e12,
        student_budget=1e12,
        eval_limit=200,
        dump_docs=4000,
    ),
    # The CI end-to-end test: a few hundred documents, ~1 min.
    "ci": DemoSize(
        name="ci",
        max_docs=400,
        heldout_fraction=0.05,
        vocab_size=512,
        seq_len=32,
        k=8,
        config="trainer/configs/demo.py",
        teacher_budget=2e10,
        student_budget=5e9,
        # HLDF phase 1 gets a single step at this budget: no warm-up
        # (a longer one than the phase is refused, as WSD's is).
        overrides=(
            "data.batch_size=8",
            "optim.warmup_steps=5",
            "hldf.warmup_steps=0",
            "log_every=5",
            "checkpoint_every=50",
        ),
        eval_limit=0,
        dump_batch_size=8,
    ),
    # One GPU: gemma3-1b-shaped teacher, gemma3-270m-shaped students, V=8192
    # (what 4.9 MB of text supports), T=512, k=128. Estimated ~10 min of
    # training on an H100 at ~30% MFU; not yet run on a GPU. Loss defaults (alpha
    # 0.7, tail bucket) as in the cpu size: k=128 of V=8192 keeps more mass, and
    # the trainer prints the objective penalty before training.
    "gpu": DemoSize(
        name="gpu",
        max_docs=None,
        heldout_fraction=0.02,
        vocab_size=8192,
        seq_len=512,
        k=128,
        config="trainer/configs/demo.py",
        teacher_budget=1.8e16,
        student_budget=2.5e15,
        overrides=(
            "model.dtype=bfloat16",
            "data.batch_size=32",
            "optim.lr=1e-3",
            "hldf.warmup_steps=10",
            "peak_flops_per_device=699e12",
        ),
        eval_limit=1000,
        dump_batch_size=8,
    ),
}

# Per-size model names (trainer --set model.name=...) and the teacher's width /
# median layer that HLD students need.
MODELS = {
    "cpu": {
        "teacher": "demo-teacher",
        "student": "demo-student",
        "teacher_d": 128,
        "teacher_layer": 2,
    },
    "ci": {
        "teacher": "demo-teacher",
        "student": "demo-student",
        "teacher_d": 128,
        "teacher_layer": 2,
    },
    "gpu": {
        "teacher": "gemma3-1b",
        "student": "gemma3-270m",
        "teacher_d": 1152,
        "teacher_layer": 13,
    },
}


def get_size(name: str) -> DemoSize:
    """Looks up a size; ValueError lists the known ones."""
    if name not in SIZES:
        raise ValueError(f"unknown demo size {name!r}; use one of {sorted(SIZES)}")
    return SIZES[name]
