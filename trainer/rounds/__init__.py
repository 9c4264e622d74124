"""On-policy rounds through the store (``python -m trainer.rounds``).

* ``driver`` — ``run_rounds(...)``: per round, the student writes rollouts
  (``trainer.generate``), the teacher scores them (``pipelines.dump
  --input-store``), the trainer trains ``onpolicy.staleness`` steps on them
  (``trainer.training.loop``); a ledger (``rounds.json``) makes every stage
  resumable.

Builds on ``trainer.generate``, ``trainer.training``, ``trainer.evaluate``,
``trainer.model`` and ``store``; runs ``pipelines.dump`` as a subprocess (the
trainer never imports the pipeline); nothing imports it.
"""
