"""Distillation training of a student on a teacher-signal store.

* ``config``     — the ml_collections trainer config: load, override, validate.
* ``losses``, ``tiled_loss`` — KD / HLD loss terms; the token-tiled logit path.
* ``schedules``  — alpha (KD vs HLD) and learning-rate schedules.
* ``methods``    — nll | kd | hldc | hldf | opd | oprd: their phases (terms, store fields,
  schedules); ``phase_loss`` — a phase's loss on a batch, its terms composed;
  ``layer_match`` — which student layer meets which teacher layer, and their regressors.
* ``live_teacher``, ``live_kd`` — a frozen teacher checkpoint run inside the step; its
  full-vocabulary tile losses. ``onpolicy`` — OPD / OPRD token weights and OPD's
  single-sample estimator.
* ``data``       — the Grain loader over a store; ``store_align`` — store ↔ config geometry.
* ``sharding``   — the device mesh and logical-axis rules; ``distributed`` — joining a
  multi-process run.
* ``distributed`` — joining a multi-process run (jax.distributed from JAX_* or auto-detection).
* ``state``, ``checkpoint`` — the train state and its Orbax checkpoints.
* ``microbatch`` — gradient accumulation: a step's batch as a scan over micro-batches.
* ``metrics``    — metrics.jsonl / TensorBoard writing and reading.
* ``eval_results`` — eval.json: scores with their row sets (what evaluation writes and
  report / sweep compare; here so both layers read one definition).
* ``loop``       — ``run(config)``: the training loop (``python -m trainer``);
  ``interrupt`` — SIGINT/SIGTERM: checkpoint and stop; ``run_lock`` — one owner per
  run directory; ``memory`` — out-of-memory as one line, the ``ulimit -v`` check.
  ``hidden_share`` — the HLD term's printed share of the loss and gradient.

Builds on ``trainer.model``, ``trainer.flops`` and ``store``.
"""
