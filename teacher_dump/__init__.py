"""Teacher-signal extraction: load a teacher, run it, hand numpy to the store.

* ``teacher`` — ``load_teacher`` (params on one or several devices).
* ``extract`` — ``make_extract_fn``: jitted top-k log-probs + hidden states.
* ``loop``    — ``extract_rows``: batching with host/device overlap.
* ``encode``  — the store profiles' encoders in jnp, composed after the
  extraction step (``make_encoded_extract_fn``; numerics in ``encode_ops``).
* ``sampled`` — sampled logits: S draws per position, keyed by store row.
* ``topk``    — the exact two-stage top-k over vocabulary groups.
* ``convert`` — the CLI ``python -m teacher_dump.convert`` (HF import; the code
  is ``trainer.model.hf_import``).

JAX only, no Beam: the Beam ModelHandler is ``pipelines.teacher_handler``.
Builds on ``trainer.model``.
"""
from teacher_dump.extract import make_extract_fn
from teacher_dump.loop import extract_rows
from teacher_dump.teacher import Teacher, load_teacher

__all__ = ["load_teacher", "make_extract_fn", "extract_rows", "Teacher"]
