"""The files of a model checkpoint directory, usable without JAX or Orbax.

`model_io` writes and reads whole checkpoints (Orbax, JAX). A launcher that
only needs a teacher's config (the dump pipeline's `plan`) reads config.json
itself and parses it here, so it never imports JAX:

    PATH/params/         Orbax StandardCheckpointer tree (fp32 arrays)
    PATH/config.json     ModelConfig.to_dict()
    PATH/metadata.json   user metadata + "fingerprint"; written LAST
"""

import json

from trainer.model import model_config
from trainer.model.errors import ModelIOError
from trainer.model.model_config import ModelConfig

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
# What fixes a damaged checkpoint depends on who wrote it; name both writers.
REWRITE_HINT = (
    "the files are damaged: write it again (a run's export/: re-run the same "
    "`python -m trainer` command, which re-exports from its last checkpoint; "
    "a converted teacher: `python -m teacher_dump.convert ... --overwrite`)"
)


def parse_config(text, where) -> ModelConfig:
    """The ModelConfig in a checkpoint's config.json text.

    Args:
        text: the contents of config.json.
        where: the checkpoint directory, named in the error.

    Raises:
        ModelIOError: not JSON, or not a valid ModelConfig.
    """
    try:
        return ModelConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError, model_config.ConfigError) as e:
        raise ModelIOError(
            f"model checkpoint {where} has an unreadable {CONFIG_FILE} ({e}); {REWRITE_HINT}"
        ) from None
