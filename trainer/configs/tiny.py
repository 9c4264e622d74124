"""Tiny CPU config: a 4-block d=64 student (model_config "tiny") on a test store.

Cost: not measured (batch 8, T=32: small enough for the CPU test suite).
Reaches: nothing meaningful; exercises every code path (tests, demo, bench).
Usage: python -m trainer --config tiny --set store.url=S --set run_dir=R
On-policy (tiny:opd, tiny:oprd): S a rollout store (loss_mask; token_logprob for OPD,
hidden/2 for OPRD), or a tokens store with --set teacher.checkpoint=DIR (a live teacher
of V=512; OPRD also --set teacher.d_model=<its width> teacher.hidden_layer=<a layer>).
Fits: any one CPU or accelerator device (batch 8 × 32, fp32, remat none, no
micro-batches); on TOPOLOGY below (TPU v5e:2x2, 4 chips × 16 GiB, data-parallel mesh)
the TPU compiler needs 3 MiB per chip (args + temporaries + outputs, 2026-12-06,
libtpu 0.0.42.1: `python bench/step_memory.py --config tiny:kd --batch 8 --seq 32
--topology v5e:2x2`).
"""

from trainer.configs.base import base_config

TOPOLOGY = "v5e:2x2"  # What the number above was compiled for (tests/trainer/test_trainer_fits.py).


def get_config(arg=None):
    """Tiny student; `arg` may name the method, e.g. "tiny.py:hldc" or "tiny.py:opd"."""
    c = base_config()
    c.method = arg or "kd"
    c.model.name = "tiny"
    c.model.vocab_size = 512
    c.teacher.hidden_layer = 2
    c.teacher.d_model = 64
    c.data.batch_size = 8
    c.data.seq_len = 32
    c.data.k = 8
    c.data.num_threads = 1
    c.data.prefetch_buffer_size = 2
    c.loss.token_tile = 128
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.hldf.p1 = 0.2
    c.hldf.warmup_steps = 1
    c.budget.unit = "flops"
    c.budget.value = 2e10
    c.log_every = 10
    c.checkpoint_every = 50
    c.peak_flops_per_device = 1e11  # Rough single-core CPU fp32 peak.
    return c
