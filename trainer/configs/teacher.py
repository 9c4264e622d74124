"""Teacher pre-training: NLL on a tokens-only store (k=0) with the same trainer.

Model: gemma3-4b shape by default (arg: any model_config name, e.g.
"teacher.py:gemma3-1b"), V=32,000. Cost: OT_1 of a 3.2B backbone = 64B tokens
≈ 1.3e21 FLOPs (6N + 6dV per token, `trainer.flops`); wall time not measured (it
needs a pod); for demos use "teacher.py:tiny-7".
Reaches: not measured; the teacher quality the students distil from. export/ is
what teacher_dump.load_teacher reads.
Fits (gemma3-4b, TOPOLOGY below): TPU v5p:2x2x1 (4 chips × 95.74 GiB), mesh fsdp=4,
batch 256 × 2048 as 4 micro-batches of 16 rows per chip, model.remat=full: 38.05 GiB
per chip (args 9.20 — params and AdamW moments — + temporaries 28.85; outputs donated;
TPU compiler, libtpu 0.0.42.1, 2026-12-06: `python bench/step_memory.py --config
teacher --batch 256 --seq 2048 --topology v5p:2x2x1 --set mesh.fsdp=4 --set mesh.data=1`).
"""

from trainer.configs.base import base_config

TOPOLOGY = (
    "v5p:2x2x1"  # What the numbers above were compiled for (tests/trainer/test_trainer_fits.py).
)


def get_config(arg=None):
    """NLL pre-training of the named model (default gemma3-4b)."""
    c = base_config()
    c.method = "nll"  # loss.alpha / loss.tail are unused: NLL has no KD term.
    c.model.name = arg or "gemma3-4b"
    c.model.vocab_size = 32000
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.data.micro_batches = 4  # 64 rows per chip on 4 chips, 16 per micro-batch.
    c.data.batch_size = 256
    c.optim.lr = 4e-4
    c.budget.unit = "ot"
    c.budget.value = 1.0
    c.mesh.fsdp = -1
    c.mesh.data = 1
    if c.model.name.startswith("tiny"):
        # CPU demo sizes: a few hundred steps in minutes.
        c.model.vocab_size = 512
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.data.micro_batches = 1
        c.data.batch_size = 8
        c.data.seq_len = 64
        c.optim.warmup_steps = 20
        c.budget.unit = "flops"
        c.budget.value = 1e11
        c.mesh.fsdp = 1
        c.mesh.data = -1
        c.peak_flops_per_device = 1e11
    return c
