"""Registers the evaluation fixtures (defined in eval_fixtures.py, which tests
also import helpers from: a uniquely named module, unlike `conftest`)."""

from eval_fixtures import task_root, tiny_model, tokenizer_path  # noqa: F401
