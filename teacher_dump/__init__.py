"""Teacher-signal extraction: load a teacher, run it, hand numpy to the store.

* ``teacher`` — ``load_teacher`` (params on one or several devices).
* ``extract`` — ``make_extract_fn``: jitted top-k log-probs + hidden states.
* ``loop``    — ``extract_rows``: batching with host/device overlap.
* ``encode``  — the device encoder, composed after the extraction step
  (``make_encoded_extract_fn``): dispatch to the store codecs' ``encode_jnp``,
  handed ``encode_ops`` (jnp twins of numpy's float arithmetic, bit for bit).
* ``sampled`` — sampled logits: S draws per position, keyed by store row.
* ``topk``    — the exact two-stage top-k over vocabulary groups.
* ``convert`` — the CLI ``python -m teacher_dump.convert`` (HF import; the code
  is ``trainer.model.hf_import``).

JAX only, no Beam: the Beam ModelHandler is ``pipelines.teacher_handler``.
Builds on ``trainer.model``.
"""

import importlib

__all__ = ["load_teacher", "make_extract_fn", "extract_rows", "Teacher"]
# Imported on first use: `python -m teacher_dump.convert --help` must not wait for JAX.
_EXPORTS = {
    "make_extract_fn": "extract",
    "extract_rows": "loop",
    "Teacher": "teacher",
    "load_teacher": "teacher",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"teacher_dump.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'teacher_dump' has no attribute {name!r}")
