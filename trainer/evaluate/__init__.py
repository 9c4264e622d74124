"""Evaluation of a checkpoint: held-out / document log-perplexity, downstream tasks.

* ``cli``     — the command line (``python -m trainer.evaluate``) and its JAX-free checks.
* ``runner``  — the engine: ``evaluate(...)`` (checkpoint, scoring, eval.json).
* ``tasks``   — the downstream task registry, file readers, accuracy rules.
* ``scoring`` — batched, jitted log-likelihood scoring of token rows.

Builds on ``trainer.model``, ``trainer.training`` (the tiled logit path) and ``store``.
"""
