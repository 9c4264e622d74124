"""Evaluation of a checkpoint: held-out / document log-perplexity, downstream tasks.

* ``runner``  — ``evaluate(...)`` and the CLI (``python -m trainer.evaluate``).
* ``tasks``   — the downstream task registry, file readers, accuracy rules.
* ``scoring`` — batched, jitted log-likelihood scoring of token rows.

Builds on ``trainer.model``, ``trainer.training`` (the tiled logit path) and ``store``.
"""
