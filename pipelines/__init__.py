"""Beam pipelines: input reading, the SentencePiece helper, tokenize + pack, the dump, resume.

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
