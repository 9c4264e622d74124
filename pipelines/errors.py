"""Errors raised by the dump pipeline, and how the CLI recovers them from Beam.

Every error is a `ValueError` subclass whose message is one line naming the
problem and the fix. Errors raised inside a running Beam pipeline reach the
launcher wrapped by the runner (in-process: chained exceptions; multi-process
or remote runners: only the formatted remote traceback survives), so
`find_pipeline_error` looks both through the exception chain and through the
text for `<ClassName>: <message>`.
"""

import re

# The tokenizer belongs to the model (trainer.model.tokenizer, shared with
# evaluation); its error is one of ours here too.
from trainer.model.tokenizer import TokenizerError


class PipelineError(ValueError):
    """Base class: bad input or configuration for a pipeline."""


class InputError(PipelineError):
    """An input glob matches nothing, a file cannot be read, or its format is unknown."""


class DecodeError(PipelineError):
    """An input file holds bytes that are not valid UTF-8."""


class EmptyInputError(PipelineError):
    """The inputs hold too little text to fill one row."""


class VocabMismatchError(PipelineError):
    """The tokenizer's vocabulary differs from the teacher's."""


class OptionsError(PipelineError):
    """Inconsistent or missing command-line options."""


class StoreStateError(PipelineError):
    """The target store exists but does not match this run (e.g. a different row count)."""


class StoreWriteError(PipelineError):
    """The storage under a store refused a write: disk full, read-only, permission denied."""


# The pipeline's own user errors (with every subclass: find_pipeline_error).
_ERROR_CLASSES = (PipelineError, TokenizerError)

# What a failed write raises: TensorStore turns every I/O status into a
# ValueError ("RESOURCE_EXHAUSTED: ... No space left on device
# [os_error_code='28']"), the store's local-path helpers raise OSError.
STORAGE_ERRORS = (ValueError, OSError)


def storage_failure(exc):
    """Names the storage failure behind an exception, or None if it is not one.

    Args:
        exc: an exception raised while writing a store.

    Returns:
        e.g. "no space left on device", or None (a bug or another error,
        which the caller re-raises unchanged).
    """
    # Imported here: the CLIs check their flags with these classes before the
    # store's (TensorStore's) import.
    from store import errors as store_errors
    from store import remote

    if isinstance(exc, store_errors.StorageAccessError):
        return exc.failure
    local = remote.local_failure(exc)
    if local is not None:
        return local
    # Object stores report no errno, only the status.
    for status, what in (
        ("RESOURCE_EXHAUSTED", "storage exhausted"),
        ("PERMISSION_DENIED", "permission denied"),
    ):
        if str(exc).startswith(status):
            return what
    return None


def raise_if_storage_failure(exc, doing):
    """Raises StoreWriteError("<doing> failed: <failure>") if `exc` is a storage failure.

    Args:
        exc: the exception caught around a store write.
        doing: what was being done, e.g. "writing unit 3 to /data/store".
    """
    failure = storage_failure(exc)
    if failure is not None:
        raise StoreWriteError(f"{doing} failed: {failure}") from None


def find_pipeline_error(exc, extra_classes=()):
    """Finds the user-facing error inside an exception raised by a Beam runner.

    Args:
        exc: the exception the runner raised.
        extra_classes: other ValueError subclasses (e.g. the store's errors) to
            recognise by type in the exception chain and by name in the text.

    Returns:
        A `ValueError` carrying the one-line message, or None when the failure
        is not one of ours (a genuine bug, to be shown with its traceback).
    """
    known = _ERROR_CLASSES + tuple(extra_classes)
    seen = set()
    current = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, known):
            return current
        current = current.__cause__ or current.__context__
    # By name, a class and every subclass of it (a remote traceback names the raised class).
    names = {cls.__name__: cls for cls in _with_subclasses(known)}
    # "InputError: msg" or "pipelines.errors.InputError: msg" in a remote
    # traceback; the message runs to the end of its line.
    pattern = re.compile(r"(?<!\w)(?:[\w.]*\.)?(" + "|".join(names) + r"): ([^\n]+)")
    # The innermost (last) match is the original error; outer frames repeat
    # it with runner context appended.
    matches = pattern.findall(str(exc))
    if not matches:
        return None
    name, message = matches[-1]
    return names[name](_strip_runner_context(message))


def _with_subclasses(classes):
    out, todo = [], list(classes)
    while todo:
        cls = todo.pop()
        if cls not in out:
            out.append(cls)
            todo += cls.__subclasses__()
    return out


def _strip_runner_context(message):
    # Beam re-raises DoFn errors with " [while running 'Step']" appended.
    return re.sub(r" \[while running '[^\n]*'\]$", "", message.strip())


def clean_message(exc):
    """The one-line message of a user error, without Beam's step suffix."""
    return _strip_runner_context(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class DropUserErrorTracebacks:
    """A logging filter: drops Beam's ERROR records (with traceback) for user errors.

    The CLI prints those errors itself as one line; a real bug still logs.

    Args:
        classes: the exception classes counted as user errors.
    """

    def __init__(self, classes):
        self._classes = tuple(classes)

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        return find_pipeline_error(exc, self._classes) is None
