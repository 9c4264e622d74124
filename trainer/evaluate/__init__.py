"""Evaluation of a checkpoint: held-out / document log-perplexity, downstream tasks.

* ``cli``     — the command line (``python -m trainer.evaluate``) and its JAX-free checks.
* ``runner``  — the engine: ``evaluate(...)`` (checkpoint, scoring, eval.json).
* ``tasks``   — the downstream task registry, file readers, accuracy rules.
* ``scoring`` — batched, jitted log-likelihood scoring of token rows.
* ``sample_nll`` — the teacher's NLL of the student's own samples
  (``python -m trainer.evaluate.sample_nll``).

Builds on ``trainer.model``, ``trainer.training`` (the tiled logit path) and ``store``.
"""
