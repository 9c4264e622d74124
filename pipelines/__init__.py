"""The Beam dump pipeline: text -> tokens -> packed rows -> teacher signal -> store.

* ``dump``      — ``python -m pipelines.dump``: plan, build and run the pipeline.
* ``plan``      — launcher-side checks and store schemas (no JAX).
* ``options``   — the command-line flags.
* ``inputs``    — input globs, formats, decompression (Beam filesystems).
* ``packing``   — document packing rule and the held-out split.
* ``spine``     — the tokenize/pack stages; ``teacher_stage`` — RunInference + store writes.
* ``teacher_handler`` — the Beam ModelHandler around ``teacher_dump``.
* ``train_tokenizer`` — ``python -m pipelines.train_tokenizer`` (corpus -> tokenizer).
* ``progress``, ``errors`` — progress lines; user errors recovered from Beam.

The top of the dependency order: builds on ``store``, ``trainer.model`` and
``teacher_dump``; nothing imports ``pipelines``.

Importing this package drops one line Beam logs at import on every machine
without Google's apitools ("WARNING:root:apitools not found, ..."): Beam
itself goes on without it, and the line misleads users who never touch
BigQuery. Other warnings are untouched.
"""

import logging


class _DropApitoolsWarning(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_DropApitoolsWarning())
