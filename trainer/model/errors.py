"""The three kinds of user error on the JAX side (trainer, teacher_dump, evaluation).

All are ValueError with a one-line message naming the problem and the fix, so
a CLI prints the line and exits 2. Every module raises and catches these
three under their own names (no per-module aliases): a caller acts on the
kind of problem, not on which module found it.

* ``ConfigError``     — a setting is unknown, malformed or out of range (model
  and trainer configs, loss/schedule/regressor/mesh/data/FLOPs/extraction options).
* ``ModelInputError`` — arrays handed to a function have the wrong shape,
  dtype or values (token ids out of range, misaligned inputs).
* ``ModelIOError``    — a checkpoint on disk is missing, incomplete, unreadable
  or would be overwritten.

Elsewhere: ``store.errors.StoreError`` (the store's own hierarchy; its
``StorageAccessError``, an outage, is also an ``OSError``),
``pipelines.errors.PipelineError`` (the dump's inputs and flags),
``tokenizer.TokenizerError``, ``hf_import.ConvertError`` and the evaluation,
report and sweep errors; ``loop.TrainingDivergedError`` (NaN/Inf, exit 3).
"""


class ConfigError(ValueError):
    """A config (model or trainer) or an option is unknown, malformed or out of range."""


class ModelInputError(ValueError):
    """Bad arguments to the model functions (shapes, layer indices, token ids)."""


class ModelIOError(ValueError):
    """A model checkpoint is missing, incomplete, unreadable or would be overwritten."""
