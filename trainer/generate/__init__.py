"""Rollouts: a student checkpoint generates completions of prompts (``python -m trainer.generate``).

* ``runner``  — ``rollouts(...)`` (the library function) and the CLI: output to a
  rollout tokens store (with ``loss_mask``, resumable) or a JSON-lines file.
* ``prompts`` — prompts from the prefixes of tokens-store rows, or a text file.
* ``rows``    — fixed-shape generation batches; rows assembled and written (store / JSON lines).

The decoding itself (KV cache, sampling, batch-independent keys) is
``trainer.model.generate``; this package adds inputs, outputs and progress.
Builds on ``trainer.model``, ``trainer.flops``, ``trainer.evaluate`` (checkpoint
resolution), ``trainer.training`` (run locks) and ``store``.
"""
