"""The student side: the Gemma 3 model, distillation training, FLOPs, evaluation, reports.

Subpackages and modules, lowest first (docs/INTERFACES.md "Layout"; enforced by
tests/test_import_graph.py):

* ``trainer.model``    — Gemma 3 config, forward, checkpoint files (model_io,
  layout), the Hugging Face import, the regressor heads and the tokenizer.
* ``trainer.flops``    — parameter and FLOPs accounting, phase plans
  (``python -m trainer.flops``).
* ``trainer.training`` — the trainer: config, losses, methods, schedules, data,
  sharding, the loop, its state, checkpoints, metrics (``python -m trainer``).
* ``trainer.evaluate`` — evaluation of a checkpoint (``python -m trainer.evaluate``).
* ``trainer.report``   — sweep comparison report (``python -m trainer.report``).
* ``trainer.sweep``    — hyper-parameter sweeps (``python -m trainer.sweep``).
* ``trainer.configs``  — the shipped training configs, loaded by path.
* ``trainer.export_hf`` — CLI of ``trainer.model.hf_export`` (Hugging Face export).
"""
